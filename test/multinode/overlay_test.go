package multinode_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/packet"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
)

// vxlanFrame is a VXLAN payload (RFC 7348: flags with the VNI bit, the
// VNI) carrying a UDP datagram from src to dst as an Ethernet frame to
// the overlay device of the node with address node (0e:70 and the
// address, bpf/lib/peer.h).
func vxlanFrame(vni uint32, node netip.Addr, src, dst netip.AddrPort, payload []byte) []byte {
	a := node.As4()
	mac := net.HardwareAddr{0x0e, 0x70, a[0], a[1], a[2], a[3]}
	inner := packet.Ether(mac, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}, packet.EthPIPv4,
		packet.IPv4(packet.IPv4Header{ID: 1, TTL: 64, Protocol: packet.ProtoUDP, Src: src.Addr(), Dst: dst.Addr()},
			packet.UDP(src.Addr(), dst.Addr(), src.Port(), dst.Port(), payload)))
	return append([]byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}, inner...)
}

// from_overlay takes only what known nodes encapsulate. A host on the
// underlay that is no node sends a node a VXLAN packet on the overlay's
// port, the inner datagram addressed to a pod there: the node's kernel
// decapsulates it, and from_overlay drops it (drop_unknown_peer), so the
// pod receives nothing. The same packet with another node's address as
// its outer source is delivered, which shows the packet itself is sound.
func TestOverlayDropsUnknownNodes(t *testing.T) {
	c := sharedCluster(t, loader.RoutingVXLAN)
	host := c.outside(t)
	n, pod := c.nodes[0], c.pods[0][0]
	dst := netip.AddrPortFrom(pod.IP, 7300)
	got := serveUDP(t, pod.Do, dst.String())
	src := netip.AddrPortFrom(c.pods[1][0].IP, 40001)
	frame := vxlanFrame(loader.DefaultVNI, n.Address, src, dst, []byte("encapsulated by a stranger"))

	dropped := func() uint64 {
		pc, err := n.PacketCounts()
		if err != nil {
			t.Fatal(err)
		}
		return pc["from_overlay/drop_unknown_peer"]
	}
	before := dropped()
	if err := sim.SendRawUDP(host.Do, host.IP, n.Address, loader.DefaultVXLANPort, frame); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(ioTimeout); dropped() == before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("from an unknown node: from_overlay counted no drop_unknown_peer in %v", ioTimeout)
		}
	}
	select {
	case d := <-got:
		t.Fatalf("from an unknown node: the pod received %q from %s", d.Data, d.From)
	default:
	}

	if err := sim.SendRawUDP(host.Do, c.nodes[1].Address, n.Address, loader.DefaultVXLANPort, frame); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if d.From != src || string(d.Data) != "encapsulated by a stranger" {
			t.Errorf("from a known node's address: the pod received %q from %s, want the datagram from %s", d.Data, d.From, src)
		}
	case <-time.After(ioTimeout):
		t.Errorf("from a known node's address: nothing arrived in %v", ioTimeout)
	}
}
