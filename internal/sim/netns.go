package sim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces live, as `ip netns` keeps them.
const netnsDir = "/run/netns"

// NewNetNS creates a network namespace named after parts and this process
// (so parallel test binaries never collide), loopback up, for callers that
// need a namespace the plugin has not touched. Remove it with RemoveNetNS.
func NewNetNS(parts ...string) (ns.NetNS, error) { return newNetNS(uniqueName(parts...)) }

// RemoveNetNS removes a namespace made by NewNetNS.
func RemoveNetNS(n ns.NetNS) error { return removeNetNS(n) }

// newNetNS creates a network namespace bind-mounted at /run/netns/<name>,
// with its loopback up.
func newNetNS(name string) (ns.NetNS, error) {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(netnsDir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		// The thread is left locked and so dies with the goroutine: it has
		// changed namespace and must not run anything else.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount: %w", err)
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	n, err := ns.GetNS(path)
	if err != nil {
		unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
		return nil, err
	}
	return n, nil
}

// removeNetNS closes and unmounts a namespace made by newNetNS; the kernel
// destroys it, and every device in it, once nothing else holds it.
func removeNetNS(n ns.NetNS) error {
	if n == nil {
		return nil
	}
	path := n.Path()
	n.Close()
	var errs []error
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
