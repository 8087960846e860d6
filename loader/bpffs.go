package loader

import (
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// BPFFSMount is where the BPF filesystem is conventionally mounted.
const BPFFSMount = "/sys/fs/bpf"

// ensureBPFFS makes sure pins under root land on a BPF filesystem, mounting
// one at /sys/fs/bpf when the host has not (containers and minimal VMs often
// do not).
func ensureBPFFS(root string) error {
	root = filepath.Clean(root)
	var st unix.Statfs_t
	for dir := root; ; dir = filepath.Dir(dir) {
		if err := unix.Statfs(dir, &st); err == nil {
			if st.Type == unix.BPF_FS_MAGIC {
				return nil
			}
			break
		}
		if dir == "/" {
			break
		}
	}
	if root != BPFFSMount && !strings.HasPrefix(root, BPFFSMount+"/") {
		return fmt.Errorf("pin root %s is not on a BPF filesystem", root)
	}
	if err := unix.Mount("bpf", BPFFSMount, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", BPFFSMount, err)
	}
	return nil
}
