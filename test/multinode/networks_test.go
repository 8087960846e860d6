package multinode_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
)

// Across the overlay, networks stay apart: the VNI carries the sending
// pod's network, and the receiving node's from_overlay drops what a
// network that does not reach the pod's sends (drop_network_isolated,
// counted there), over TCP, UDP and ICMP, both ways. Pods of one network
// on two nodes talk, and so do two networks one of which reaches the
// other, once both nodes know of the reach.
func TestNetworksAcrossOverlay(t *testing.T) {
	c := sharedCluster(t, loader.RoutingVXLAN)
	network := func(i int, name string, reaches ...string) sim.PodOption {
		t.Helper()
		l, err := c.nodes[i].NewNetworkList(name, reaches...)
		if err != nil {
			t.Fatal(err)
		}
		return sim.WithNetworkList(l)
	}
	blue1 := c.addPod(t, 0, "blue1", network(0, "blue"))
	blue2 := c.addPod(t, 1, "blue2", network(1, "blue"))
	red2 := c.addPod(t, 1, "red2", network(1, "red"))
	green3 := c.addPod(t, 2, "green3", network(2, "green", "blue"))
	plain3 := c.pods[2][0] // the node's own network, "podpath"
	// A node knows the networks of its pods. Node 1 must also know that
	// green, which has no pod there, reaches blue (podpath network add):
	// without it, node 1 drops green's packets to blue1.
	green3Sends := func() {
		t.Helper()
		before := c.counts(t)[0]["from_overlay/drop_network_isolated"]
		if err := sim.Ping(green3.Do, blue1.IP, 13, 56); err == nil {
			t.Errorf("ICMP green3 -> blue1 with green unknown on node 1: answered")
		}
		if got := c.counts(t)[0]["from_overlay/drop_network_isolated"] - before; got == 0 {
			t.Errorf("green3 -> blue1 with green unknown on node 1: node 1 counted no drop_network_isolated")
		}
	}
	green3Sends()
	nws, err := maps.OpenNetworks(c.nodes[0].PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer nws.Close()
	if _, err := nws.Put("green", []string{"blue"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nws.Delete("green") })

	reach := func(from, to *sim.Pod) {
		t.Helper()
		if _, err := sim.TCPEcho(from, to, []byte("across nodes")); err != nil {
			t.Errorf("TCP %s -> %s: %v", from.Name, to.Name, err)
		}
		if _, err := sim.UDPEcho(from, to, []byte("across nodes")); err != nil {
			t.Errorf("UDP %s -> %s: %v", from.Name, to.Name, err)
		}
		if err := sim.Ping(from.Do, to.IP, 11, 56); err != nil {
			t.Errorf("ICMP %s -> %s: %v", from.Name, to.Name, err)
		}
	}
	isolated := func(from, to *sim.Pod, at int) {
		t.Helper()
		before := c.counts(t)[at]["from_overlay/drop_network_isolated"]
		if err := sim.Ping(from.Do, to.IP, 12, 56); err == nil {
			t.Errorf("ICMP %s -> %s across networks that do not reach each other: answered", from.Name, to.Name)
		}
		if _, err := sim.FetchTCP(from.Do, netip.AddrPortFrom(to.IP, 7100).String(), 500*time.Millisecond); err == nil {
			t.Errorf("TCP %s -> %s across networks that do not reach each other: connected", from.Name, to.Name)
		}
		if err := sim.SendRawUDP(from.Do, from.IP, to.IP, 7101, []byte("isolated?")); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(ioTimeout)
		for {
			got := c.counts(t)[at]["from_overlay/drop_network_isolated"] - before
			if got >= 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s -> %s: node %d counted %d from_overlay/drop_network_isolated, want at least 3 (echo request, SYN, datagram)", from.Name, to.Name, at+1, got)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	serveTCP(t, red2.Do, "red2", netip.AddrPortFrom(red2.IP, 7100).String())
	serveTCP(t, blue1.Do, "blue1", netip.AddrPortFrom(blue1.IP, 7100).String())
	serveTCP(t, plain3.Do, "plain3", netip.AddrPortFrom(plain3.IP, 7100).String())

	reach(blue1, blue2)
	reach(blue2, blue1)
	reach(green3, blue1)
	reach(blue1, green3)
	isolated(blue1, red2, 1)
	isolated(red2, blue1, 0)
	isolated(green3, red2, 1)
	isolated(red2, plain3, 2)
	isolated(blue2, plain3, 2)
}
