package snat_test

import (
	"crypto/rand"
	"net"
	"testing"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
)

// Datagrams of 8,000 bytes from a pod to the outside host leave as six
// fragments (MTU 1500), and only the first carries the ports (or the echo
// identifier) the mapping is made for: to_netdev gives the later ones the
// first one's source, so the outside host reassembles the datagram and
// sees it from the node's address. The 8,000-byte answer comes back as
// fragments too, and from_netdev gives each the pod's address.
func TestFragmentsMasqueraded(t *testing.T) {
	node, pods := newNode(t, 1)
	o := node.Outside
	msg := make([]byte, 8000)
	rand.Read(msg)

	// The pod's socket is connected to the outside host: the kernel
	// delivers it only an answer from there, and only a whole one.
	t.Run("UDP", func(t *testing.T) {
		pc, got, err := sim.ServeUDPEcho(o.Do, net.JoinHostPort(o.IP.String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		before := packetCounts(t, node)
		masqueraded := counter(t, node, maps.HookToNetdev, maps.ReasonSNAT)
		rt, err := sim.RoundTripUDP(pods[0].Do, o.Do, got, pc.LocalAddr().String(), msg)
		if err != nil {
			t.Fatalf("%d bytes to the outside host: %v (%v)", len(msg), err, rt)
		}
		if rt.Seen.Addr() != o.NodeIP {
			t.Errorf("the outside host saw the datagram from %s, want the node's %s", rt.Seen, o.NodeIP)
		}
		if err := rt.Fragmented(); err != nil {
			t.Errorf("%v: this test shows nothing", err)
		}
		// Every fragment of the request left masqueraded, not only the first.
		if n := counter(t, node, maps.HookToNetdev, maps.ReasonSNAT) - masqueraded; n != uint64(rt.Client["Ip.FragCreates"]) {
			t.Errorf("to_netdev masqueraded %d packets, the pod sent %d fragments", n, rt.Client["Ip.FragCreates"])
		}
		t.Logf("%d bytes each way, seen from %s: %v; podpath counted %s", len(msg), rt.Seen, rt, packetCounts(t, node).Since(before))
	})

	// The outside host's kernel answers an echo request: ping checks that
	// the reply's data is the request's.
	t.Run("ICMP echo", func(t *testing.T) {
		before := packetCounts(t, node)
		if err := sim.Ping(pods[0].Do, o.IP, 0x4343, len(msg)); err != nil {
			t.Fatalf("%d-byte ping of the outside host: %v", len(msg), err)
		}
		t.Logf("%d bytes each way; podpath counted %s", len(msg), packetCounts(t, node).Since(before))
	})

	if drops := packetCounts(t, node).Drops(); drops != "" {
		t.Errorf("drops: %s", drops)
	}
}

func packetCounts(t *testing.T, n *sim.Node) sim.PacketCounts {
	t.Helper()
	c, err := n.PacketCounts()
	if err != nil {
		t.Fatal(err)
	}
	return c
}
