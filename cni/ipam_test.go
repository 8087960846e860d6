package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

func TestHostRange(t *testing.T) {
	for _, tc := range []struct{ cidr, first, last string }{
		{"10.0.0.0/24", "10.0.0.1", "10.0.0.254"},
		{"10.0.0.16/28", "10.0.0.17", "10.0.0.30"},
		{"10.0.0.0/30", "10.0.0.1", "10.0.0.2"},
		{"10.0.0.0/8", "10.0.0.1", "10.255.255.254"},
	} {
		first, last := hostRange(netip.MustParsePrefix(tc.cidr))
		if first.String() != tc.first || last.String() != tc.last {
			t.Errorf("%s: %s-%s, want %s-%s", tc.cidr, first, last, tc.first, tc.last)
		}
	}
}

func alloc(t *testing.T, dir string, cidr netip.Prefix, id string) (netip.Addr, bool, error) {
	t.Helper()
	p, err := openPool(dir, "net", cidr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	return p.allocate(id, "eth0", netip.Addr{})
}

// The pool hands out every host address once, is idempotent per attachment,
// survives reopening, reports exhaustion with its code, and reuses released
// addresses only after the others (round robin).
func TestPoolAllocateRelease(t *testing.T) {
	dir := t.TempDir()
	cidr := netip.MustParsePrefix("10.9.0.0/29") // 6 addresses
	got := map[netip.Addr]string{}
	for i := range 6 {
		id := fmt.Sprintf("c%d", i)
		a, fresh, err := alloc(t, dir, cidr, id)
		if err != nil || !fresh {
			t.Fatalf("allocate %s: %v %v fresh=%v", id, a, err, fresh)
		}
		if a == cidr.Addr() || a == netip.MustParseAddr("10.9.0.7") {
			t.Fatalf("allocated the network or broadcast address %s", a)
		}
		if prev, dup := got[a]; dup {
			t.Fatalf("%s allocated to %s and %s", a, prev, id)
		}
		got[a] = id
	}
	again, fresh, err := alloc(t, dir, cidr, "c2")
	if err != nil || fresh || got[again] != "c2" {
		t.Fatalf("repeated allocate: %s fresh=%v %v", again, fresh, err)
	}
	_, _, err = alloc(t, dir, cidr, "c6")
	var e *types.Error
	if !errors.As(err, &e) || e.Code != CodePoolExhausted || e.Msg != "address pool 10.9.0.0/29 exhausted: 6 addresses in use" {
		t.Fatalf("exhausted pool: %v", err)
	}

	p, err := openPool(dir, "net", cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.release(Allocation{Addr: again, ContainerID: "someone-else", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if _, held, _ := p.find("c2", "eth0"); !held {
		t.Fatal("release by another owner freed the address")
	}
	if err := p.release(Allocation{Addr: again, ContainerID: "c2", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	p.Close()
	a, fresh, err := alloc(t, dir, cidr, "c7")
	if err != nil || !fresh || a != again {
		t.Fatalf("after release: %s fresh=%v %v, want %s", a, fresh, err, again)
	}
}

// Goroutines with their own lock file descriptors exclude each other as
// separate plugin processes do.
func TestPoolConcurrent(t *testing.T) {
	dir := t.TempDir()
	cidr := netip.MustParsePrefix("10.9.1.0/24")
	var wg sync.WaitGroup
	addrs := make([]netip.Addr, 100)
	for i := range addrs {
		wg.Go(func() {
			p, err := openPool(dir, "net", cidr)
			if err != nil {
				t.Error(err)
				return
			}
			defer p.Close()
			addrs[i], _, err = p.allocate(fmt.Sprintf("c%d", i), "eth0", netip.Addr{})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("%s allocated twice", a)
		}
		seen[a] = true
	}
}

// A record's temporary file, left by a plugin killed between writing it and
// renaming it into place, is removed by the next invocation.
func TestPoolRemovesTmpOfKilledWriter(t *testing.T) {
	dir := t.TempDir()
	cidr := netip.MustParsePrefix("10.9.2.0/29")
	if _, _, err := alloc(t, dir, cidr, "c0"); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(IPAMDir(dir), ".10.9.2.5.tmp")
	if err := os.WriteFile(tmp, []byte("killed\neth0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := alloc(t, dir, cidr, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file of the killed writer: %v", err)
	}
}

// Attachment locks: ADD and DEL wait for one another, GC's try fails while
// either holds the attachment, and a closed file (a dead process) frees it.
// Other attachments are independent.
func TestAttachmentLock(t *testing.T) {
	dir := t.TempDir()
	held, err := lockAttachment(dir, "net", "ppaaaaaaaaaaa", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockAttachment(dir, "net", "ppaaaaaaaaaaa", false); !errors.Is(err, errAttachmentBusy) {
		t.Fatalf("try on a held attachment: %v, want errAttachmentBusy", err)
	}
	other, err := lockAttachment(dir, "net", "ppbbbbbbbbbbb", false)
	if err != nil {
		t.Fatalf("try on another attachment: %v", err)
	}
	other.Close()
	got := make(chan error, 1)
	go func() {
		l, err := lockAttachment(dir, "net", "ppaaaaaaaaaaa", true)
		if err == nil {
			l.Close()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a waiting lock returned while held: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	held.Close()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("abc", "eth0")
	if len(a) != 13 || a[:2] != "pp" || a == HostVethName("abc", "eth1") || a != HostVethName("abc", "eth0") {
		t.Fatalf("HostVethName: %q", a)
	}
	// sha256("abc/eth0") starts with these 11 hex digits.
	if a != "pp538f587a236" {
		t.Fatalf("HostVethName: %q", a)
	}
}

// Two networks on one node share its pool: their pods never get the same
// address, each network finds and releases only its own attachments, and
// records of the per-network pools older versions kept are taken over,
// marked with their network, unless two networks both handed out the
// address.
func TestPoolSharedByNetworks(t *testing.T) {
	dir := t.TempDir()
	cidr := netip.MustParsePrefix("10.9.3.0/29") // 6 addresses
	// What an older version left: network "old" holds .1 and .2, and
	// network "older" handed out .2 again.
	for net, addrs := range map[string][]string{"old": {"10.9.3.1", "10.9.3.2"}, "older": {"10.9.3.2"}} {
		d := networkDir(dir, net)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if err := os.WriteFile(filepath.Join(d, a), []byte("legacy-"+net+"\neth0\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	// with runs fn on network's pool, open only meanwhile: its flock
	// excludes every other opening, in this process too.
	with := func(network string, fn func(p *pool)) {
		t.Helper()
		p, err := openPool(dir, network, cidr)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		fn(p)
	}
	got := map[netip.Addr]string{}
	for i, net := range []string{"a", "b", "a", "b"} {
		with(net, func(p *pool) {
			addr, fresh, err := p.allocate(fmt.Sprintf("c%d", i), "eth0", netip.Addr{})
			if err != nil || !fresh {
				t.Fatalf("%s: allocate: %v fresh=%v", net, err, fresh)
			}
			if prev, dup := got[addr]; dup {
				t.Fatalf("%s handed out to %s and to network %s", addr, prev, net)
			}
			got[addr] = net
		})
	}
	for _, legacy := range []string{"10.9.3.1", "10.9.3.2"} {
		if _, dup := got[netip.MustParseAddr(legacy)]; dup {
			t.Errorf("%s, held in an older per-network pool, was handed out again", legacy)
		}
	}
	with("a", func(p *pool) {
		all, err := p.list()
		if err != nil {
			t.Fatal(err)
		}
		for _, al := range all {
			if al.Addr.String() == "10.9.3.1" && (al.Network != "old" || al.ContainerID != "legacy-old" || al.IfName != "eth0") {
				t.Errorf("10.9.3.1 taken over as %+v, want network old's legacy-old/eth0", al)
			}
		}
	})
	if _, err := os.Stat(filepath.Join(networkDir(dir, "older"), "10.9.3.2")); err != nil {
		t.Errorf("the address two older pools both held: %v, want it left in the second one", err)
	}
	// Each network finds only its own attachment of a container ID.
	with("b", func(p *pool) {
		if _, ok, _ := p.find("c0", "eth0"); ok {
			t.Errorf("network b finds network a's c0")
		}
	})
	with("old", func(p *pool) {
		if _, ok, _ := p.find("legacy-old", "eth0"); !ok {
			t.Errorf("network old does not find its taken-over attachment")
		}
	})
	// Full: the pool counts every network's addresses.
	with("c", func(p *pool) {
		if _, _, err := p.allocate("c9", "eth0", netip.Addr{}); err == nil {
			t.Errorf("a seventh address from a pool of 6 (2 taken over, 4 allocated) was handed out")
		}
	})
}
