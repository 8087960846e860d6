package snat_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
)

// A pod uploads 4 MiB to a remote host behind the outside host, a router
// whose route to the remote has an MTU of 1280, while both ends have 1500.
// TCP sets DF, so the router answers the pod's full-sized segments, which
// left masqueraded, with ICMP fragmentation needed to the node's address,
// quoting node:port -> remote. from_netdev must hand the error to the pod,
// quoting pod:port -> remote, for the pod's TCP to lower its path MTU;
// otherwise the transfer stalls in a black hole until its deadline. The
// router's Icmp.OutDestUnreachs and the pod's route to the remote (MTU
// 1280) show that path MTU discovery took place.
func TestPathMTUMasqueraded(t *testing.T) {
	const (
		size = 4 << 20
		mtu  = 1280
	)
	node, pods := newNode(t, 1)
	router := node.Outside
	remote, err := node.AddRemote("remote", netip.MustParsePrefix("10.240.0.1/24"), netip.MustParsePrefix("10.240.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(remote.IP.String(), "8080")
	ln, err := sim.ServeTCP(remote.Do, addr, sim.CountReceived)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	undo, err := sim.LimitRouteMTU(router.Do, netip.PrefixFrom(remote.IP, 32), remote.RouterLink, netip.Addr{}, mtu)
	if err != nil {
		t.Fatal(err)
	}
	defer undo()
	sent0, err := sim.SNMP(router.Do)
	if err != nil {
		t.Fatal(err)
	}
	before := packetCounts(t, node)
	start := time.Now()
	got, err := sim.SendTCP(pods[0].Do, addr, size, 20*time.Second)
	took := time.Since(start)
	if err != nil || got != fmt.Sprint(size) {
		t.Fatalf("%d bytes to the remote host: %v (it received %q)", size, err, got)
	}
	sent1, err := sim.SNMP(router.Do)
	if err != nil {
		t.Fatal(err)
	}
	sent := sent1["Icmp.OutDestUnreachs"] - sent0["Icmp.OutDestUnreachs"]
	if sent < 1 {
		t.Errorf("the router sent no fragmentation needed: this test shows nothing")
	}
	pmtu, err := sim.RouteMTU(pods[0].Do, remote.IP)
	if err != nil {
		t.Fatal(err)
	}
	if pmtu != mtu {
		t.Errorf("the pod's route to %s has MTU %d, want the %d the error said", remote.IP, pmtu, mtu)
	}
	now := packetCounts(t, node)
	t.Logf("%d bytes in %v: the router sent %d fragmentation needed, the pod's path MTU to %s is now %d; podpath counted %s",
		size, took.Round(time.Millisecond), sent, remote.IP, pmtu, now.Since(before))
	if drops := now.Drops(); drops != "" {
		t.Errorf("drops: %s", drops)
	}
}
