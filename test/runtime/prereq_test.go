package runtimetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podpath/podpath/internal/ctrtest"
)

// requireRoot fails the test unless it runs as root: namespaces, bpffs pins
// and runtimes all need it.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("test/runtime needs root (network namespaces, BPF pins, containerd); run it with sudo")
	}
}

// goBin is where `go install` puts programs, such as cnitool.
func goBin(t testing.TB) string {
	t.Helper()
	out, err := exec.Command(ctrtest.GoTool(t), "env", "GOPATH").Output()
	if err != nil {
		t.Fatalf("go env GOPATH: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "bin")
}
