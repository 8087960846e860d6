package socklb_test

import (
	"errors"
	"os"
	"testing"

	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
)

// Socket load balancing restricts itself to the node's network namespace by
// its cookie. Where the kernel cannot report cookies (before 5.14), the node
// still comes up with the rest of the datapath, the socket programs are not
// loaded, and attaching them fails with loader.ErrNoNetnsCookie, naming what
// is missing. Where it can, the cookie of each namespace is its own.
func TestRefusedWithoutNetnsCookie(t *testing.T) {
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	n := newTestNode(t, "cookie", 10, 1)
	sockPin := maps.ProgPath(n.PinRoot, maps.SocketPrograms[0])
	var attachErr error
	var podCookie, nodeCookie uint64
	var podErr, nodeErr error
	if err := n.Do(func() error {
		nodeCookie, nodeErr = loader.NetnsCookie()
		if !f.NetnsCookie {
			// Refused before it touches the directory (where it would
			// otherwise mount cgroup2); the other tests attach for real.
			attachErr = loader.AttachSocketLB(n.PinRoot, t.TempDir())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := n.backends[0].Do(func() error {
		podCookie, podErr = loader.NetnsCookie()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, statErr := os.Stat(sockPin)

	if !f.NetnsCookie {
		t.Logf("kernel %s: no netns cookies; checking the refusal", f.Kernel)
		if !errors.Is(attachErr, loader.ErrNoNetnsCookie) {
			t.Errorf("AttachSocketLB: %v, want %v", attachErr, loader.ErrNoNetnsCookie)
		}
		if !errors.Is(statErr, os.ErrNotExist) {
			t.Errorf("socket program pinned at %s (%v) on a kernel that cannot restrict it", sockPin, statErr)
		}
		if !errors.Is(nodeErr, loader.ErrNoNetnsCookie) || !errors.Is(podErr, loader.ErrNoNetnsCookie) {
			t.Errorf("NetnsCookie: %v / %v, want %v", nodeErr, podErr, loader.ErrNoNetnsCookie)
		}
		return
	}
	if statErr != nil {
		t.Errorf("socket program not pinned: %v", statErr)
	}
	if nodeErr != nil || podErr != nil || nodeCookie == 0 || podCookie == 0 || nodeCookie == podCookie {
		t.Errorf("netns cookies: node %d (%v), pod %d (%v); want two different non-zero ones", nodeCookie, nodeErr, podCookie, podErr)
	}
}
