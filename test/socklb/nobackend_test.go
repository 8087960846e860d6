package socklb_test

import (
	"net/netip"
	"testing"
	"time"
)

// A service without backends fails the call at once with EPERM: connect()
// for TCP and connected UDP, sendto() for unconnected UDP. (kube-proxy
// rejects with ECONNREFUSED; a cgroup hook can only deny, which is EPERM.
// Either way the caller learns immediately instead of timing out.)
func TestServiceWithoutBackends(t *testing.T) {
	f := newCgroupFixture(t)
	n := newTestNode(t, "empty", 4, 1)
	n.writeClusterIPs(t)
	cg := f.newCgroup(t, "empty")
	attach(t, n, cg)

	front := netip.AddrPortFrom(vipEmpty, frontendPort).String()
	start := time.Now()
	res := client(t, f, cg, n.NS.Path(),
		clientOp{Kind: opTCP, Addr: front, Count: 1},
		clientOp{Kind: opUDPConnected, Addr: front, Count: 1},
		clientOp{Kind: opUDP, Addr: front, Count: 1})
	if d := time.Since(start); d >= clientTimeout {
		t.Errorf("failing took %v: want an immediate error, not a timeout", d)
	}
	for i, want := range []exchange{
		{Step: "connect", Errno: "EPERM"},
		{Step: "connect", Errno: "EPERM"},
		{Step: "send", Errno: "EPERM"},
	} {
		if got := res[i].Exchanges[0]; got.Step != want.Step || got.Errno != want.Errno {
			t.Errorf("%s to %s: %+v, want %s to fail with %s", []string{"TCP", "connected UDP", "unconnected UDP"}[i], front, got, want.Step, want.Errno)
		}
	}
	// The service with backends is still reached, from the same cgroup.
	res = client(t, f, cg, n.NS.Path(), clientOp{Kind: opTCP, Addr: netip.AddrPortFrom(vip, frontendPort).String(), Count: 1})
	if e := res[0].Exchanges[0]; e.Errno != "" {
		t.Errorf("TCP to the service with backends: %s failed with %s", e.Step, e.Errno)
	}
}
