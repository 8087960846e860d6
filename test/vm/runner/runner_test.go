package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestModuleLoadOrder(t *testing.T) {
	// As busybox depmod writes it: dependencies in no particular order.
	dep := `kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/drivers/virtio/virtio.ko kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/overlayfs/overlay.ko:
`
	builtin := "kernel/drivers/virtio/virtio_pci.ko\n"
	got, err := moduleLoadOrder(strings.NewReader(dep), strings.NewReader(builtin),
		[]string{"virtio_pci", "9pnet_virtio", "9p", "overlay"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/drivers/virtio/virtio.ko", "kernel/net/9p/9pnet.ko", "kernel/drivers/virtio/virtio_ring.ko",
		"kernel/net/9p/9pnet_virtio.ko",
		"kernel/fs/netfs/netfs.ko", "kernel/fs/fscache/fscache.ko", "kernel/fs/9p/9p.ko",
		"kernel/fs/overlayfs/overlay.ko",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("load order\n got %v\nwant %v", got, want)
	}
	if _, err := moduleLoadOrder(strings.NewReader(dep), nil, []string{"veth"}); err == nil {
		t.Error("a module that is neither in modules.dep nor built in: no error")
	}
}

func TestPickImages(t *testing.T) {
	search := `linux-image-6.1.0-9-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-rt-amd64-unsigned - Linux 6.1 for 64-bit PCs, PREEMPT_RT
linux-image-6.1.0-56-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-amd64-dbg - Debug symbols for linux-image-6.1.0-56-amd64
linux-image-6.12.117+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.1.0-47-amd64-unsigned - Linux 6.1 for 64-bit PCs
`
	got := pickImages("6.1", []byte(search))
	want := []string{"linux-image-6.1.0-56-amd64-unsigned", "linux-image-6.1.0-47-amd64-unsigned", "linux-image-6.1.0-9-amd64-unsigned"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("6.1: got %v, want %v", got, want)
	}
	if got := pickImages("6.12", []byte(search)); !reflect.DeepEqual(got, []string{"linux-image-6.12.117+deb12-amd64-unsigned"}) {
		t.Errorf("6.12: got %v", got)
	}
}

func TestNewestCached(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-60-amd64", "5.10.0-46-amd64"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
		if d != "6.1.0-60-amd64" { // an interrupted fetch: no kernel.json
			os.WriteFile(filepath.Join(root, d, kernelInfo), []byte("{}"), 0o644)
		}
	}
	if dir, ok := newestCached("6.1", root); !ok || filepath.Base(dir) != "6.1.0-56-amd64" {
		t.Errorf("6.1: %s %v", dir, ok)
	}
	if _, ok := newestCached("6.12", root); ok {
		t.Error("6.12 found in a cache without one")
	}
}

func TestGuestEnv(t *testing.T) {
	got := guestEnv([]string{"PATH=/usr/bin", "PWD=/x", "SSH_AUTH_SOCK=/tmp/a", "PODPATH_CNI_BIN=/b/podpath-cni", "HOME=/root"})
	want := []string{"PATH=/usr/bin", "PODPATH_CNI_BIN=/b/podpath-cni", "HOME=/root"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestReadExitCode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "exit")
	for _, tc := range []struct {
		content string
		started bool
		code    int
		ok      bool
	}{
		{"", false, 0, false},
		{"started\n", true, 0, false},
		{"started\nexit 0\n", true, 0, true},
		{"started\nexit 143\n", true, 143, true},
	} {
		os.WriteFile(p, []byte(tc.content), 0o644)
		code, ok := readExitCode(p)
		if guestStarted(p) != tc.started || code != tc.code || ok != tc.ok {
			t.Errorf("%q: started %v, code %d %v", tc.content, guestStarted(p), code, ok)
		}
	}
}

// The initramfs must be a newc archive that cpio itself lists the same way.
func TestCPIO(t *testing.T) {
	busybox, err := findBusybox()
	if err != nil {
		t.Skip(err)
	}
	var buf bytes.Buffer
	c := &cpioWriter{w: &buf}
	c.Dir("bin")
	c.CharDev("dev/console", 5, 1)
	c.File("init", 0o755, []byte("#!/bin/sh\n"))
	c.File("modules/00-a.ko", 0o644, []byte("odd length"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not 4-aligned", buf.Len())
	}
	cmd := exec.Command(busybox, "cpio", "-t")
	cmd.Stdin = &buf
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	if got, want := strings.Fields(string(out)), []string{"bin", "dev/console", "init", "modules/00-a.ko"}; !reflect.DeepEqual(got, want) {
		t.Errorf("cpio -t: got %v, want %v", got, want)
	}
}

func TestLastWrite(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "logs", "a.log")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for _, p := range []string{dir, filepath.Join(dir, "logs")} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	when := time.Now().Add(-time.Minute).Truncate(time.Second)
	if err := os.Chtimes(f, when, when); err != nil {
		t.Fatal(err)
	}
	if got := lastWrite(dir); !got.Equal(when) {
		t.Errorf("lastWrite = %s, want the nested file's %s", got, when)
	}
	if got := lastWrite(filepath.Join(dir, "none")); !got.IsZero() {
		t.Errorf("lastWrite of a missing directory = %s, want zero", got)
	}
}

// TestStalledGuestStopped boots a guest whose command writes nothing: the
// runner must take it as hung, have its kernel dump the blocked tasks and the
// CPUs' stacks to the kept console log, and stop it with its own failure.
func TestStalledGuestStopped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("booting a VM needs root (the kernel cache, 9p shares)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "vm-runner")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	console := filepath.Join(dir, "console.log")
	logs := filepath.Join(dir, "logs")
	if err := os.Mkdir(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command(bin, "-kernel", "6.1", "-console", console,
		"-stall-dir", logs, "-stall", "20s", "-timeout", "5m", "--", "sleep", "600")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitVMFailed {
		t.Fatalf("runner: %v, want exit %d\n%s", err, exitVMFailed, out)
	}
	if !strings.Contains(string(out), "the guest stalled") {
		t.Errorf("runner's output does not say the guest stalled:\n%s", out)
	}
	if took := time.Since(start); took > 3*time.Minute {
		t.Errorf("stopped after %s, not after the 20s stall", took)
	}
	b, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sysrq: Show Blocked State", "sysrq: Show backtrace of all active CPUs"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("console log lacks %q:\n%s", want, b)
		}
	}
}
