package ctrtest

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// InstallHint is appended to every missing-prerequisite failure. The tests
// never skip: a machine without the runtimes must say so loudly.
const InstallHint = "run scripts/install-deps.sh as root to install it"

// RequireTool returns the path of a program the test needs, looking on PATH
// and then in extraDirs, and fails the test when it is missing.
func RequireTool(t testing.TB, name string, extraDirs ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range extraDirs {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	where := "PATH"
	if len(extraDirs) > 0 {
		where += " or " + strings.Join(extraDirs, ", ")
	}
	t.Fatalf("%s not found on %s: %s", name, where, InstallHint)
	return ""
}

// RequireTools fails the test unless every named program is on PATH.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		RequireTool(t, name)
	}
}

// RequireStaticBusybox returns a busybox binary that runs inside an image
// holding nothing else: it must not need a dynamic loader.
func RequireStaticBusybox(t testing.TB) string {
	t.Helper()
	p := RequireTool(t, "busybox")
	f, err := elf.Open(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Fatalf("%s is dynamically linked and cannot run alone in an image; install busybox-static: %s", p, InstallHint)
		}
	}
	return p
}

// GoTool finds the go command that runs these tests.
func GoTool(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("go command not found on PATH")
	}
	return p
}
