package socklb_test

import (
	"net/netip"
	"testing"

	"github.com/podpath/podpath/maps"
)

// Only processes in the cgroup are translated: one elsewhere in the node's
// network namespace connects to the ClusterIP itself, which the node has no
// route to, so the kernel answers ENETUNREACH for the ClusterIP, not a
// backend.
func TestOutsideTheCgroupNotTranslated(t *testing.T) {
	f := newCgroupFixture(t)
	n := newTestNode(t, "outside", 5, 2)
	n.writeClusterIPs(t)
	attach(t, n, f.newCgroup(t, "outside"))

	front := netip.AddrPortFrom(vip, frontendPort).String()
	res := client(t, f, "", n.NS.Path(),
		clientOp{Kind: opTCP, Addr: front, Count: 1},
		clientOp{Kind: opUDP, Addr: front, Count: 1})
	if e := res[0].Exchanges[0]; e.Step != "connect" || e.Errno != "ENETUNREACH" {
		t.Errorf("TCP from outside the cgroup: %+v, want connect to fail with ENETUNREACH", e)
	}
	if e := res[1].Exchanges[0]; e.Step != "send" || e.Errno != "ENETUNREACH" {
		t.Errorf("UDP from outside the cgroup: %+v, want sendto to fail with ENETUNREACH", e)
	}
	if rev := sockRevEntries(t, n.PinRoot); len(rev) != 0 {
		t.Errorf("socket map has entries %+v, want none", rev)
	}
}

// Only sockets in the node's network namespace are translated. A pod's
// process in the very same cgroup connects to the ClusterIP untouched by the
// socket programs, and from_pod balances it per packet instead: the backend
// sees the pod's address, conntrack holds the flow, the socket map nothing.
func TestOtherNetnsNotTranslated(t *testing.T) {
	f := newCgroupFixture(t)
	n := newTestNode(t, "podns", 6, 2)
	n.writeClusterIPs(t)
	cg := f.newCgroup(t, "podns")
	attach(t, n, cg)
	pod := n.addPod(t, "client", false)

	front := netip.AddrPortFrom(vip, frontendPort)
	res := client(t, f, cg, pod.NS.Path(), clientOp{Kind: opTCP, Addr: front.String(), Count: 1})
	e := res[0].Exchanges[0]
	if e.Errno != "" {
		t.Fatalf("TCP from a pod to %s: %s failed with %s", front, e.Step, e.Errno)
	}
	if name, client := e.served(); client.Addr() != pod.IP {
		t.Errorf("%s saw client %s, want the pod %s", name, client, pod.IP)
	}
	if e.Peer != front.String() {
		t.Errorf("getpeername %s, want %s", e.Peer, front)
	}
	if rev := sockRevEntries(t, n.PinRoot); len(rev) != 0 {
		t.Errorf("socket map has entries %+v: the socket programs translated a pod's socket", rev)
	}
	var fwd int
	for _, k := range conntrackEntries(t, n.PinRoot) {
		if maps.AddrFrom16(k.Family, k.Saddr) == pod.IP && maps.AddrFrom16(k.Family, k.Daddr) == vip &&
			maps.HostPort(k.Dport) == frontendPort {
			fwd++
		}
	}
	if fwd != 1 {
		t.Errorf("conntrack has %d entries for %s -> %s, want the flow from_pod translated", fwd, pod.IP, front)
	}
}

// Two nodes on one machine attach to the same cgroups, each with the same
// ClusterIP and its own backends. Each node's programs translate only
// sockets of that node's network namespace, whichever runs first: in one
// cgroup node b's programs are attached first, in the other node a's.
func TestNodesSharingACgroup(t *testing.T) {
	f := newCgroupFixture(t)
	a := newTestNode(t, "share-a", 7, 2)
	b := newTestNode(t, "share-b", 8, 2)
	a.writeClusterIPs(t)
	b.writeClusterIPs(t)
	bFirst, aFirst := f.newCgroup(t, "b-first"), f.newCgroup(t, "a-first")
	attach(t, b, bFirst)
	attach(t, a, bFirst)
	attach(t, a, aFirst)
	attach(t, b, aFirst)

	front := netip.AddrPortFrom(vip, frontendPort).String()
	for _, tc := range []struct {
		cgroup string
		node   *testNode
	}{
		{bFirst, a}, {aFirst, b}, {bFirst, b}, {aFirst, a},
	} {
		res := client(t, f, tc.cgroup, tc.node.NS.Path(), clientOp{Kind: opTCP, Addr: front, Count: 6})
		for i, e := range res[0].Exchanges {
			if e.Errno != "" {
				t.Fatalf("node %s in %s, connection %d: %s failed with %s", tc.node.Name, f.relative(tc.cgroup), i, e.Step, e.Errno)
			}
			pod, client := e.served()
			if client.Addr() != tc.node.addr || e.Peer != front {
				t.Errorf("node %s in %s, connection %d: %s saw %s, peer %s; want the node's %s and peer %s",
					tc.node.Name, f.relative(tc.cgroup), i, pod, client, e.Peer, tc.node.addr, front)
			}
		}
	}
}
