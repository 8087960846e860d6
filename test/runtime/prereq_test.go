package runtimetest

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// installHint is appended to every missing-prerequisite failure. These tests
// never skip: a machine without the runtimes must say so loudly.
const installHint = "run scripts/install-deps.sh as root to install it"

// requireRoot fails the test unless it runs as root: namespaces, bpffs pins
// and runtimes all need it.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("test/runtime needs root (network namespaces, BPF pins, containerd); run it with sudo")
	}
}

// requireTool returns the path of a program the test needs, looking on PATH
// and then in extraDirs, and fails the test when it is missing.
func requireTool(t testing.TB, name string, extraDirs ...string) string {
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
	t.Fatalf("%s not found on %s: %s", name, where, installHint)
	return ""
}

// requireTools fails the test unless every named program is on PATH.
func requireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		requireTool(t, name)
	}
}

// requireStaticBusybox returns a busybox binary that runs inside an image
// holding nothing else: it must not need a dynamic loader.
func requireStaticBusybox(t testing.TB) string {
	t.Helper()
	p := requireTool(t, "busybox")
	f, err := elf.Open(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Fatalf("%s is dynamically linked and cannot run alone in an image; install busybox-static: %s", p, installHint)
		}
	}
	return p
}

// goBin is where `go install` puts programs, such as cnitool.
func goBin(t testing.TB) string {
	t.Helper()
	out, err := exec.Command(goTool(t), "env", "GOPATH").Output()
	if err != nil {
		t.Fatalf("go env GOPATH: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "bin")
}

// goTool finds the go command that runs these tests.
func goTool(t testing.TB) string {
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
