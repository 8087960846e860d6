package socklb_test

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podpath/podpath/loader"
)

// TestHybridCgroupRoot: on a host in systemd's hybrid layout the cgroup root
// (a tmpfs of v1 hierarchies) names its unified/ cgroup2 mount, so the
// agent's default --socket-lb-cgroup (the host's /sys/fs/cgroup) works there
// too; any other directory is itself.
func TestHybridCgroupRoot(t *testing.T) {
	base, err := os.MkdirTemp("/run", "podpath-hybrid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	root := filepath.Join(base, "cgroup")
	unified := filepath.Join(root, "unified")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(root, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", root, err)
		}
	})
	if err := os.Mkdir(unified, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := loader.HybridCgroup2(root); got != root {
		t.Errorf("a tmpfs whose unified/ is no cgroup2 mount: %s, want %s", got, root)
	}
	if err := unix.Mount("cgroup2", unified, "cgroup2", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(unified, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", unified, err)
		}
	})
	if got := loader.HybridCgroup2(root); got != unified {
		t.Errorf("the root of a hybrid layout: %s, want %s", got, unified)
	}
	if got := loader.HybridCgroup2(unified); got != unified {
		t.Errorf("a cgroup2 mount: %s, want itself", got)
	}
	if mounted, err := loader.EnsureCgroup2(loader.HybridCgroup2(root)); err != nil || mounted {
		t.Errorf("EnsureCgroup2 on the hybrid layout's v2 root: mounted %v, %v; want it taken as it is", mounted, err)
	}
	if got := loader.HybridCgroup2(base); got != base {
		t.Errorf("a plain directory: %s, want itself", got)
	}
}
