package runtimetest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
)

// loopbackPkg is the reference loopback plugin, at the plugins version in
// go.mod. containerd brings up every pod's lo with it.
const loopbackPkg = "github.com/containernetworking/plugins/plugins/main/loopback@v1.10.0"

// workDir holds what every test in this package shares: the built
// binaries. TestMain creates and removes it.
var workDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "podpath-rt-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// artifacts are the programs built once per test binary.
type artifacts struct {
	cniBin string // podpath-cni and the loopback plugin
	pause  string // static pause program for the sandbox image
}

var (
	buildOnce sync.Once
	built     artifacts
	buildErr  error
)

// buildArtifacts builds podpath-cni, the loopback plugin and the pause
// program, concurrently, the first time a test asks. PODPATH_CNI_BIN,
// PODPATH_LOOPBACK_BIN and PODPATH_PAUSE_BIN name binaries built beforehand
// instead (the VM test driver builds them on the host, where the module
// proxy and a fast CPU are).
func buildArtifacts(t testing.TB) artifacts {
	t.Helper()
	goCmd := goTool(t)
	buildOnce.Do(func() {
		start := time.Now()
		built = artifacts{
			cniBin: filepath.Join(workDir, "cni-bin"),
			pause:  filepath.Join(workDir, "pause"),
		}
		steps := []func() error{
			func() error {
				_, err := sim.BuildCNI(built.cniBin)
				return err
			},
			func() error {
				if pre := os.Getenv("PODPATH_PAUSE_BIN"); pre != "" {
					return os.Symlink(pre, built.pause)
				}
				return goRun(goCmd, "", nil, "build", "-trimpath", "-ldflags=-s -w",
					"-o", built.pause, "github.com/podpath/podpath/test/runtime/pause")
			},
			func() error {
				if pre := os.Getenv("PODPATH_LOOPBACK_BIN"); pre != "" {
					if err := os.MkdirAll(built.cniBin, 0o755); err != nil {
						return err
					}
					return os.Symlink(pre, filepath.Join(built.cniBin, "loopback"))
				}
				// Outside the module, so it builds against its own go.mod.
				return goRun(goCmd, workDir, []string{"GOBIN=" + built.cniBin, "GOFLAGS=-mod=mod"},
					"install", loopbackPkg)
			},
		}
		errs := make([]error, len(steps))
		var wg sync.WaitGroup
		for i, step := range steps {
			wg.Go(func() { errs[i] = step() })
		}
		wg.Wait()
		if buildErr = errors.Join(errs...); buildErr == nil {
			t.Logf("built podpath-cni, loopback and pause in %v", time.Since(start).Round(time.Millisecond))
		}
	})
	if buildErr != nil {
		t.Fatalf("build test binaries: %v", buildErr)
	}
	return built
}

// goRun runs the go command, static (the pause image has no libc).
func goRun(goCmd, dir string, env []string, args ...string) error {
	cmd := exec.Command(goCmd, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %v\n%s", args, err, out)
	}
	return nil
}
