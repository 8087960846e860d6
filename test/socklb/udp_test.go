package socklb_test

import (
	"net/netip"
	"testing"
)

// UDP to a ClusterIP: an unconnected socket's sendto() is balanced per
// datagram, and every reply's source, as recvfrom() reports it, is the
// ClusterIP, whichever backend sent it. A connected socket keeps the backend
// connect() chose, and getpeername() shows the ClusterIP. The backends see
// the node's address, and nothing was translated per packet.
func TestUDPToClusterIP(t *testing.T) {
	f := newCgroupFixture(t)
	n := newTestNode(t, "udp", 3, 3)
	n.writeClusterIPs(t)
	cg := f.newCgroup(t, "udp")
	attach(t, n, cg)

	front := netip.AddrPortFrom(vip, frontendPort)
	res := client(t, f, cg, n.NS.Path(),
		clientOp{Kind: opUDP, Addr: front.String(), Count: 12},
		clientOp{Kind: opUDPConnected, Addr: front.String(), Count: 5})

	check := func(what string, i int, e exchange) string {
		t.Helper()
		if e.Errno != "" {
			t.Fatalf("%s datagram %d to %s: %s failed with %s", what, i, front, e.Step, e.Errno)
		}
		if e.From != front.String() {
			t.Errorf("%s datagram %d: reply from %s, want the ClusterIP %s", what, i, e.From, front)
		}
		pod, client := e.served()
		if client.Addr() != n.addr {
			t.Errorf("%s datagram %d: %s saw client %s, want the node's address %s", what, i, pod, client, n.addr)
		}
		return pod
	}

	unconnected := map[string]int{}
	for i, e := range res[0].Exchanges {
		unconnected[check("unconnected", i, e)]++
	}
	if len(unconnected) < 2 {
		t.Errorf("12 datagrams from one unconnected socket all went to %v: want them balanced per datagram", unconnected)
	}
	t.Logf("unconnected socket, datagrams per backend: %v", unconnected)

	connected := map[string]int{}
	for i, e := range res[1].Exchanges {
		if e.Peer != front.String() {
			t.Errorf("connected socket: getpeername %s, want %s", e.Peer, front)
		}
		connected[check("connected", i, e)]++
	}
	if len(connected) != 1 {
		t.Errorf("a connected socket's datagrams went to %v, want one backend", connected)
	}

	if ct := conntrackEntries(t, n.PinRoot); len(ct) != 0 {
		t.Errorf("conntrack has %d entries, want none (no per-packet NAT): %+v", len(ct), ct)
	}
	// One entry per (socket, backend): each backend the unconnected socket
	// used, and the connected socket's one.
	var udp int
	for _, e := range sockRevEntries(t, n.PinRoot) {
		if e.SvcID == 2 {
			udp++
			if e.Frontend != front {
				t.Errorf("socket map entry %+v: want frontend %s", e, front)
			}
		}
	}
	if want := len(unconnected) + 1; udp != want {
		t.Errorf("socket map holds %d UDP entries, want %d", udp, want)
	}
}
