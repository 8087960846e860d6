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
// built once per process. PODPATH_CNI_BIN names a binary built beforehand
// to use instead (the VM test driver builds on the host, where compiling
// is fast, and the guest only runs).
func BuildCNI(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	return dir, build("podpath-cni", "PODPATH_CNI_BIN", filepath.Join(dir, PluginType))
}

// BuildPodpath builds cmd/podpath, the CLI and node agent, into dir and
// returns the binary's path; PODPATH_BIN names a prebuilt one instead.
func BuildPodpath(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "podpath")
	return bin, build("podpath", "PODPATH_BIN", bin)
}

// build puts command cmd/<name> at bin, once per process: a link to the
// binary the environment variable prebuilt names, or a fresh build.
func build(name, prebuilt, bin string) error {
	buildMu.Lock()
	defer buildMu.Unlock()
	if err, done := buildCache[bin]; done {
		return err
	}
	err := buildOnce(name, prebuilt, bin)
	buildCache[bin] = err
	return err
}

func buildOnce(name, prebuilt, bin string) error {
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return err
	}
	if pre := os.Getenv(prebuilt); pre != "" {
		return os.Symlink(pre, bin)
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build %s: %w\n%s", name, err, out.String())
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
