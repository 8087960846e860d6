package cni_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
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
	if _, err := sim.TCPEcho(first[0], first[1], []byte("within a network")); err != nil {
		t.Errorf("TCP between two pods of the first network: %v", err)
	}
	if _, err := sim.UDPEcho(other[1], other[2], []byte("within a network")); err != nil {
		t.Errorf("UDP between two pods of the second network: %v", err)
	}
	expectIsolated(t, n, first[0], other[0])
	expectIsolated(t, n, other[1], first[2])

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

// Networks are isolation domains: pods of one network reach each other,
// pods of two networks do not (TCP, UDP and ICMP, counted as
// drop_network_isolated), and a network that declares a reach towards
// another talks with it both ways, and with no third one.
func TestNetworkIsolationOneNode(t *testing.T) {
	n := newNode(t, "isolate", "10.233.0.0/28")
	ctx := testContext(t)
	second, err := n.NewNetworkList("podpath-second")
	if err != nil {
		t.Fatal(err)
	}
	third, err := n.NewNetworkList("podpath-third", n.NetName)
	if err != nil {
		t.Fatal(err)
	}
	a0, a1 := addPod(t, n, "a0"), addPod(t, n, "a1")
	b0, err := n.AddPod(ctx, "b0", sim.WithNetworkList(second))
	if err != nil {
		t.Fatal(err)
	}
	c0, err := n.AddPod(ctx, "c0", sim.WithNetworkList(third))
	if err != nil {
		t.Fatal(err)
	}

	if _, err := sim.TCPEcho(a0, a1, []byte("same network")); err != nil {
		t.Errorf("TCP within a network: %v", err)
	}
	expectIsolated(t, n, a0, b0)
	expectIsolated(t, n, b0, a1)
	// The third network reaches the first: both ways, TCP, UDP and ICMP.
	for _, pair := range [][2]*sim.Pod{{c0, a0}, {a1, c0}} {
		if _, err := sim.TCPEcho(pair[0], pair[1], []byte("reached")); err != nil {
			t.Errorf("TCP %s -> %s across a reach: %v", pair[0].Name, pair[1].Name, err)
		}
		if _, err := sim.UDPEcho(pair[0], pair[1], []byte("reached")); err != nil {
			t.Errorf("UDP %s -> %s across a reach: %v", pair[0].Name, pair[1].Name, err)
		}
		if err := sim.Ping(pair[0].Do, pair[1].IP, 7, 56); err != nil {
			t.Errorf("ping %s -> %s across a reach: %v", pair[0].Name, pair[1].Name, err)
		}
	}
	// ... and not the second.
	expectIsolated(t, n, c0, b0)

	nws, err := maps.OpenNetworks(n.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer nws.Close()
	list, err := nws.List()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{n.NetName: "-", "podpath-second": "-", "podpath-third": n.NetName}
	for _, nw := range list {
		if r, ok := want[nw.Name]; !ok || maps.FormatReaches(nw.Reaches) != r {
			t.Errorf("network %q (id %d) reaches %v; want %s", nw.Name, nw.ID, nw.Reaches, r)
		}
		delete(want, nw.Name)
	}
	if len(want) > 0 {
		t.Errorf("networks missing from the map: %v (have %+v)", want, list)
	}
	for _, p := range []*sim.Pod{a0, b0, c0} {
		if err := n.CheckPod(ctx, p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
	}
}

// expectIsolated checks that from reaches to over neither TCP, UDP nor
// ICMP, and that from_pod counted each attempt as drop_network_isolated.
func expectIsolated(t *testing.T, n *sim.Node, from, to *sim.Pod) {
	t.Helper()
	before, err := n.Packets(maps.HookFromPod, maps.ReasonDropNetworkIsolated)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := to.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(to.IP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = from.Do(func() error {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 500*time.Millisecond)
		if err == nil {
			c.Close()
			return fmt.Errorf("connected")
		}
		return nil
	})
	if err != nil {
		t.Errorf("TCP %s -> %s across isolated networks: %v", from.Name, to.Name, err)
	}
	if err := sim.Ping(from.Do, to.IP, 9, 8); err == nil {
		t.Errorf("ping %s -> %s across isolated networks answered", from.Name, to.Name)
	}
	if err := sim.SendRawUDP(from.Do, from.IP, to.IP, 9999, []byte("isolated?")); err != nil {
		t.Fatal(err)
	}
	// At least the SYN, the echo request and the datagram. A veth hands
	// a packet over to a softirq, so the last one's count may come later
	// than its send returned.
	deadline := time.Now().Add(5 * time.Second)
	for {
		after, err := n.Packets(maps.HookFromPod, maps.ReasonDropNetworkIsolated)
		if err != nil {
			t.Fatal(err)
		}
		if after-before >= 3 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s -> %s: drop_network_isolated rose by %d in 5 s, want at least 3", from.Name, to.Name, after-before)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
