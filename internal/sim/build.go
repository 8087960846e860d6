package sim

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// PluginType is the CNI type of podpath's plugin: runtimes run the binary
// of that name from their CNI bin directory.
const PluginType = "podpath-cni"

var (
	buildMu    sync.Mutex
	buildCache = map[string]error{}
)

// BuildCNI builds cmd/podpath-cni into dir as podpath-cni (the name the
// network configuration's type asks for) and returns dir. Each directory is
// built once per process.
func BuildCNI(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if err, done := buildCache[dir]; done {
		return dir, err
	}
	err = buildCNI(dir)
	buildCache[dir] = err
	return dir, err
}

func buildCNI(dir string) error {
	// A binary built beforehand (the VM test driver builds it on the host,
	// where compiling is fast) is linked in instead of building here.
	if bin := os.Getenv("PODPATH_CNI_BIN"); bin != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		return os.Symlink(bin, filepath.Join(dir, "podpath-cni"))
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	bin := filepath.Join(dir, "podpath-cni")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/podpath-cni")
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build podpath-cni: %w\n%s", err, out.String())
	}
	return nil
}

// moduleRoot finds the podpath source tree: beside this file when built from
// it, else wherever `go env GOMOD` points from the working directory.
func moduleRoot() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok {
		root := filepath.Join(filepath.Dir(file), "..", "..")
		if _, err := os.Stat(filepath.Join(root, "cmd", "podpath-cni", "main.go")); err == nil {
			return filepath.Clean(root), nil
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the podpath module: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("find the podpath module: not inside a Go module")
	}
	root := filepath.Dir(gomod)
	if _, err := os.Stat(filepath.Join(root, "cmd", "podpath-cni", "main.go")); err != nil {
		return "", fmt.Errorf("find the podpath module: %s has no cmd/podpath-cni", root)
	}
	return root, nil
}
