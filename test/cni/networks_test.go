package cni_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
)

// Two podpath networks on one node, conflists that differ only in name, as
// a user adds a second one: their pods get distinct addresses from the
// node's one pool, each keeps its endpoint entry and its connectivity, and
// DEL and GC of one network leave the other network's pods alone.
func TestTwoNetworksOneNode(t *testing.T) {
	n := newNode(t, "twonets", "10.232.0.0/28") // 14 addresses
	second, err := n.NewNetworkList("podpath-second")
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	var first, other []*sim.Pod
	for i := range 3 {
		first = append(first, addPod(t, n, "a"+string(rune('0'+i))))
		p, err := n.AddPod(ctx, "b"+string(rune('0'+i)), sim.WithNetworkList(second))
		if err != nil {
			t.Fatalf("add pod on the second network: %v", err)
		}
		other = append(other, p)
	}
	seen := map[netip.Addr]string{}
	for _, p := range append(slices.Clone(first), other...) {
		if prev, dup := seen[p.IP]; dup {
			t.Fatalf("%s has %s, already %s's", p.Name, p.IP, prev)
		}
		seen[p.IP] = p.Name
	}
	eps := map[netip.Addr]bool{}
	for _, ep := range endpoints(t, n) {
		eps[ep.IP] = true
	}
	for ip, name := range seen {
		if !eps[ip] {
			t.Errorf("no endpoint entry for %s (%s)", ip, name)
		}
	}
	if got := len(allocations(t, n)); got != 6 {
		t.Errorf("%d addresses recorded, want 6", got)
	}
	if _, err := sim.TCPEcho(first[0], other[0], []byte("across networks")); err != nil {
		t.Errorf("TCP from a pod of one network to one of the other: %v", err)
	}

	// DEL on the second network; GC of the second network keeping none of
	// its pods: the first network's pods keep everything.
	if err := n.DelPod(ctx, other[0]); err != nil {
		t.Fatal(err)
	}
	if err := n.GCNetwork(ctx, second); err != nil {
		t.Fatalf("GC of the second network: %v", err)
	}
	left := allocations(t, n)
	for _, p := range first {
		if !slices.Contains(left, p.IP.String()) {
			t.Errorf("after the second network's DEL and GC, %s (%s, first network) lost its address record", p.Name, p.IP)
		}
		if _, err := sim.TCPEcho(first[1], first[2], []byte("still here")); err != nil {
			t.Errorf("first network after the second's GC: %v", err)
		}
	}
	for _, p := range other {
		if slices.Contains(left, p.IP.String()) {
			t.Errorf("%s (%s, second network) kept its address after the network's GC without it", p.Name, p.IP)
		}
	}
	if got := len(left); got != 3 {
		t.Errorf("%d addresses recorded after the second network's GC, want the first network's 3: %v", got, left)
	}
	// Each network's attachments lock stays its own.
	if _, err := os.Stat(filepath.Join(n.StateDir, "ipam", "podpath-second", "attachments.lock")); err != nil {
		t.Errorf("the second network's attachments lock: %v", err)
	}
	if _, err := os.Stat(cni.IPAMDir(n.StateDir)); err != nil {
		t.Errorf("the node's pool: %v", err)
	}
}
