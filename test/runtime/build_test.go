package runtimetest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/ctrtest"
	"github.com/podpath/podpath/internal/sim"
)

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
// program, concurrently, the first time a test asks (each honours its
// PODPATH_*_BIN variable: see sim.BuildCNI and ctrtest).
func buildArtifacts(t testing.TB) artifacts {
	t.Helper()
	goCmd := ctrtest.GoTool(t)
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
			func() error { return ctrtest.BuildPause(goCmd, built.pause) },
			func() error { return ctrtest.BuildLoopback(goCmd, built.cniBin) },
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
