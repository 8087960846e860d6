package ctrtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// loopbackPkg is the reference loopback plugin, at the plugins version in
// go.mod. containerd brings up every pod's lo with it.
const loopbackPkg = "github.com/containernetworking/plugins/plugins/main/loopback@v1.10.0"

// pausePkg is the sandbox program of the pause image.
const pausePkg = "github.com/podpath/podpath/test/runtime/pause"

// BuildLoopback puts the reference loopback plugin into dir, which a
// runtime's CNI bin dir must hold beside podpath-cni. PODPATH_LOOPBACK_BIN
// names one built beforehand instead (the VM test driver builds on the
// host, where the module proxy and a fast CPU are).
func BuildLoopback(goCmd, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if pre := os.Getenv("PODPATH_LOOPBACK_BIN"); pre != "" {
		return os.Symlink(pre, filepath.Join(dir, "loopback"))
	}
	// Outside the module, so it builds against its own go.mod.
	work, err := os.MkdirTemp("", "podpath-loopback-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	return goRun(goCmd, work, []string{"GOBIN=" + dir, "GOFLAGS=-mod=mod"}, "install", loopbackPkg)
}

// BuildPause builds the static pause program to out; PODPATH_PAUSE_BIN
// names one built beforehand instead.
func BuildPause(goCmd, out string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if pre := os.Getenv("PODPATH_PAUSE_BIN"); pre != "" {
		return os.Symlink(pre, out)
	}
	return goRun(goCmd, "", nil, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pausePkg)
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
