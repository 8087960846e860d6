package sim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces live, as `ip netns` keeps them.
const netnsDir = "/run/netns"

// PrepareNetnsDir makes /run/netns a shared mount point of its own, as
// `ip netns add` and the CNI plugins' testutils.NewNS leave it. Done once, up
// front: testutils, finding a plain directory, binds it onto itself
// recursively, and a namespace mounted there before that is mounted twice,
// once hidden, so removing its file fails with EBUSY ever after. Several
// test binaries run at once, so the first to come here must get it right
// for all of them; the lock file keeps two from doing it at the same time.
func PrepareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(netnsDir+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	// Making it shared fails with EINVAL where it is no mount point yet.
	err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s onto itself: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", netnsDir, err)
	}
	return nil
}

var prepareNetnsDir = sync.OnceValue(PrepareNetnsDir)

// NewNetNS creates a network namespace named after parts and this process
// (so parallel test binaries never collide), loopback up, for callers that
// need a namespace the plugin has not touched. Remove it with RemoveNetNS.
func NewNetNS(parts ...string) (ns.NetNS, error) { return newNetNS(uniqueName(parts...)) }

// RemoveNetNS removes a namespace made by NewNetNS.
func RemoveNetNS(n ns.NetNS) error { return removeNetNS(n) }

// newNetNS creates a network namespace bind-mounted at /run/netns/<name>,
// with its loopback up.
func newNetNS(name string) (ns.NetNS, error) {
	if err := prepareNetnsDir(); err != nil {
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
