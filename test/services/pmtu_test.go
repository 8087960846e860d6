package services_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/services"
)

// Path MTU discovery through services. A host on a network of its own
// lies behind a router (the node's outside host); both it and the pods
// have an MTU of 1500, and one hop between them is narrowed to 1280 by a
// route with that MTU. TCP sets DF on every segment, so the narrow hop
// answers full-sized ones with ICMP fragmentation needed, quoting the
// segment as it saw it: translated, so with addresses the sender does not
// know its connection by. Only when the datapath gives the quote the
// addresses the sender used does its kernel find the connection, lower
// its path MTU and send smaller segments; untranslated, the error matches
// no socket and the transfer stalls in a black hole until its deadline.
//
// Each case shows that the hop sent the error (its Icmp.OutDestUnreachs)
// and that the sender took it (its route carries the narrow MTU), so none
// can pass without path MTU discovery.

const (
	pmtuSize = 4 << 20
	pmtuMTU  = 1280
	// pmtuDeadline bounds each transfer: a black hole never finishes.
	pmtuDeadline = 20 * time.Second
)

// narrowHop is a route with a narrow MTU in some namespace: to dst, out
// of dev, through gw when it is valid.
type narrowHop struct {
	do  func(func() error) error
	dst netip.Prefix
	dev string
	gw  netip.Addr
}

// transferThrough narrows hop to pmtuMTU for the rest of the test, runs
// transfer (which moves pmtuSize bytes) and checks that the hop sent
// fragmentation needed and that the sender, in the namespace sender runs
// in, learned the narrow MTU on its route to dst, the address it sends to.
func transferThrough(t *testing.T, node *sim.Node, hop narrowHop, sender func(func() error) error, dst netip.Addr, transfer func() error) {
	t.Helper()
	undo, err := sim.LimitRouteMTU(hop.do, hop.dst, hop.dev, hop.gw, pmtuMTU)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { undo() })
	sent0 := snmp(t, hop.do)
	before := packetCounts(t, node)
	start := time.Now()
	if err := transfer(); err != nil {
		t.Fatalf("%d bytes: %v", pmtuSize, err)
	}
	took := time.Since(start)
	sent := snmp(t, hop.do)["Icmp.OutDestUnreachs"] - sent0["Icmp.OutDestUnreachs"]
	if sent < 1 {
		t.Errorf("the narrow hop sent no fragmentation needed: this test shows nothing")
	}
	mtu, err := sim.RouteMTU(sender, dst)
	if err != nil {
		t.Fatal(err)
	}
	if mtu != pmtuMTU {
		t.Errorf("the sender's route to %s has MTU %d, want the %d the error said", dst, mtu, pmtuMTU)
	}
	t.Logf("%d bytes in %v: the hop sent %d fragmentation needed, the sender's path MTU to %s is now %d; podpath counted %s",
		pmtuSize, took.Round(time.Millisecond), sent, dst, mtu, packetCounts(t, node).Since(before))
}

// A pod uploads through a ClusterIP whose backend is the far host (a pod
// on another node: from_pod hands the translated segments to the stack,
// which routes them out of the uplink). The error quotes client -> far
// host, and must quote client -> ClusterIP when it reaches the client.
// The narrow hop is either
//   - the router's route to the far host: its error comes in through the
//     uplink, and from_netdev translates it;
//   - the node's own route to the far network: the node's error is routed
//     into the client's veth, and to_pod translates it.
func TestPathMTUThroughClusterIP(t *testing.T) {
	p := newFarPath(t, "svcpmtu", "10.218.0.0/24", 246)
	ln, err := sim.ServeTCP(p.far.Do, net.JoinHostPort(p.far.IP.String(), "8080"), sim.CountReceived)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	vip := netip.MustParseAddr("10.96.0.60")
	if _, err := p.m.Apply(context.Background(), []services.Service{{
		Namespace: "e2e", Name: "far",
		ClusterIP: vip,
		Ports:     []services.Port{{Port: 80, TargetPort: 8080}},
		Backends:  []services.Backend{{IP: p.far.IP, Ready: true}},
	}}); err != nil {
		t.Fatal(err)
	}
	router := p.node.Outside
	for _, tc := range []struct {
		name, client string
		hop          narrowHop
	}{
		{"router beyond the uplink", "client-1", narrowHop{router.Do, netip.PrefixFrom(p.far.IP, 32), p.far.RouterLink, netip.Addr{}}},
		{"node's own route", "client-2", narrowHop{p.node.Do, p.far.Net, sim.UplinkName, router.IP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A client of its own: the path MTU another case learned
			// stays in its pod's route cache.
			client := addPod(t, p.node, tc.client)
			transferThrough(t, p.node, tc.hop, client.Do, vip, func() error {
				got, err := sim.SendTCP(client.Do, net.JoinHostPort(vip.String(), "80"), pmtuSize, pmtuDeadline)
				if err == nil && got != fmt.Sprint(pmtuSize) {
					err = fmt.Errorf("the backend received %s bytes", got)
				}
				return err
			})
		})
	}
	if drops := dropCounters(t, p.node); drops != "" {
		t.Errorf("drops:%s", drops)
	}
}

// The far host downloads from a pod through a NodePort. from_pod gives the
// pod's segments the node's address and NodePort as source and routes them
// out of the uplink; the router's route to the far host is the narrow hop,
// and its error, quoting node:NodePort -> far host and addressed to the
// node, comes in through the uplink: from_netdev must make it quote
// backend -> far host and deliver it into the backend pod.
func TestPathMTUNodePortDownload(t *testing.T) {
	p := newFarPath(t, "svcpmtudl", "10.219.0.0/24", 243)
	backend := addPod(t, p.node, "backend")
	serveDownload(t, p.m, backend, "10.96.0.61", 30061, pmtuSize)
	router := p.node.Outside
	hop := narrowHop{router.Do, netip.PrefixFrom(p.far.IP, 32), p.far.RouterLink, netip.Addr{}}
	transferThrough(t, p.node, hop, backend.Do, p.far.IP, func() error {
		got, err := sim.FetchTCP(p.far.Do, net.JoinHostPort(router.NodeIP.String(), "30061"), pmtuDeadline)
		if err == nil && len(got) != pmtuSize {
			err = fmt.Errorf("received %d bytes", len(got))
		}
		return err
	})
	if drops := dropCounters(t, p.node); drops != "" {
		t.Errorf("drops:%s", drops)
	}
}
