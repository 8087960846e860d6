package socklb_test

import (
	"net/netip"
	"testing"
)

// A node process connecting to a ClusterIP over TCP is sent to a backend by
// its connect(): the backend sees the node's own address (nothing was
// rewritten on the way), the socket's peer is still the ClusterIP, the
// connections spread over every backend, and no packet was translated (no
// conntrack entry), while the socket map records each connection.
func TestTCPConnectToClusterIP(t *testing.T) {
	f := newCgroupFixture(t)
	n := newTestNode(t, "tcp", 1, 3)
	n.writeClusterIPs(t)
	cg := f.newCgroup(t, "tcp")
	attach(t, n, cg)

	const conns = 30
	front := netip.AddrPortFrom(vip, frontendPort)
	res := client(t, f, cg, n.NS.Path(), clientOp{Kind: opTCP, Addr: front.String(), Count: conns})

	seen := map[string]int{}
	for i, e := range res[0].Exchanges {
		if e.Errno != "" {
			t.Fatalf("connection %d to %s: %s failed with %s", i, front, e.Step, e.Errno)
		}
		if e.Peer != front.String() {
			t.Errorf("connection %d: getpeername %s, want the ClusterIP %s", i, e.Peer, front)
		}
		pod, client := e.served()
		if client.Addr() != n.addr {
			t.Errorf("connection %d: %s saw client %s, want the node's address %s", i, pod, client, n.addr)
		}
		seen[pod]++
	}
	if len(seen) != len(n.backends) {
		t.Errorf("%d connections reached %v, want all %d backends", conns, seen, len(n.backends))
	}
	t.Logf("%d connections, per backend: %v", conns, seen)

	if ct := conntrackEntries(t, n.PinRoot); len(ct) != 0 {
		t.Errorf("conntrack has %d entries, want none (no per-packet NAT): %+v", len(ct), ct)
	}
	backends := map[netip.AddrPort]bool{}
	for _, b := range n.backendAddrs() {
		backends[b] = true
	}
	cookies := map[uint64]bool{}
	for _, e := range sockRevEntries(t, n.PinRoot) {
		if e.Frontend != front || !backends[e.Backend] || e.SvcID != 1 {
			t.Errorf("socket map entry %+v: want frontend %s (service 1) and one of the backends", e, front)
		}
		cookies[e.Cookie] = true
	}
	if len(cookies) != conns {
		t.Errorf("socket map holds %d sockets, want one per connection (%d)", len(cookies), conns)
	}
}

// A NodePort is reached from the node itself at any of the node's
// addresses, the same way, and the socket sees the address it dialled.
func TestTCPConnectToNodePort(t *testing.T) {
	f := newCgroupFixture(t)
	n := newTestNode(t, "nodeport", 2, 2)
	n.writeClusterIPs(t)
	cg := f.newCgroup(t, "nodeport")
	attach(t, n, cg)

	front := netip.AddrPortFrom(n.addr, nodePort)
	res := client(t, f, cg, n.NS.Path(), clientOp{Kind: opTCP, Addr: front.String(), Count: 10})
	for i, e := range res[0].Exchanges {
		if e.Errno != "" {
			t.Fatalf("connection %d to NodePort %s: %s failed with %s", i, front, e.Step, e.Errno)
		}
		if e.Peer != front.String() {
			t.Errorf("connection %d: getpeername %s, want %s", i, e.Peer, front)
		}
		if pod, client := e.served(); client.Addr() != n.addr {
			t.Errorf("connection %d: %s saw client %s, want %s", i, pod, client, n.addr)
		}
	}
	if ct := conntrackEntries(t, n.PinRoot); len(ct) != 0 {
		t.Errorf("conntrack has %d entries, want none", len(ct))
	}
}
