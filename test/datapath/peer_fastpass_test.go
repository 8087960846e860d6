package datapath_test

// The short ways through the uplink's hooks: a pod's packet from_pod sent
// on to another node carries a mark to the egress hook it meets first,
// which lets it pass and takes the mark off; the node's own VXLAN packets
// pass to_netdev without a lookup. Each case here also shows the long way
// still taken where it must be: an unmarked packet, a masqueraded flow
// that was given the overlay port.

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/podpath/podpath/internal/progrun"
)

// markPeerForwarded is MARK_PEER_FORWARDED (bpf/lib/peer.h).
const markPeerForwarded = 0x50500001

// vxlanPort is the overlay port the tests give the programs.
const vxlanPort = 8472

// networkOrder is port as a __be16 the programs compare with.
func networkOrder(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

// from_pod marks what it sends on to another node, and only that: a pod's
// packet encapsulated towards a peer leaves marked; one into a local pod,
// or to the stack (no peer owns the destination), leaves with its mark as
// it came (0).
func TestFromPodMarksPeerForwards(t *testing.T) {
	peer := tunnelPeer(peerPodCIDR, peerNodeIP)
	for _, tc := range []struct {
		name    string
		f       flow
		verdict uint32
		mark    uint32
	}{
		{"to a peer's pod", udpFlow(podA.IP, 40800, remotePodIP, 53), tcActRedirect, markPeerForwarded},
		{"to a pod of this node", udpFlow(podA.IP, 40801, podB.IP, 53), tcActRedirect, 0},
		{"to no peer's address", udpFlow(podA.IP, 40802, otherPodIP, 53), tcActOK, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireIngressIfindex(t)
			d := newPeerDatapath(t, peer, peer.nodeEntry())
			ret, _, after, err := progrun.RunTCContext(d.fromPod, skbContext{IngressIfindex: podA.Ifindex}, tc.f.sentBy(podA))
			if err != nil {
				t.Fatal(err)
			}
			if ret != tc.verdict {
				t.Errorf("verdict %d, want %d", ret, tc.verdict)
			}
			if after.Mark != tc.mark {
				t.Errorf("mark %#x, want %#x", after.Mark, tc.mark)
			}
		})
	}
}

// A marked packet passes to_netdev and to_overlay untouched, counted as
// pass, its mark taken off; a pod's packet to the outside, which to_netdev
// would masquerade, shows that the mark alone decided it (no mapping is
// made). Unmarked, the same packet is masqueraded as ever.
func TestMarkedPeerForwardPasses(t *testing.T) {
	f := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
	in := leaving(f.ip())
	t.Run("to_netdev", func(t *testing.T) {
		d := newSNATDatapath(t, snatSetup{})
		expectMarkedPasses(t, d.toNetdev, in)
		d.expectMappings(t, emptyMapping)
		d.expectCounts(t, one("to_netdev/pass", in))

		r := d.egress(t, in)
		port := d.allocatedPort(t, r.out)
		expectBytes(t, "unmarked packet", r.out, leaving(f.from(masqIP, port).ip()))
	})
	t.Run("to_overlay", func(t *testing.T) {
		d := newSNATDatapath(t, snatSetup{Overlay: true})
		pkt := ether(overlayMAC(peerNodeIP), tunnelSrcMAC, ethPIPv4, udpFlow(podA.IP, 40803, remotePodIP, 53).ip())
		expectMarkedPasses(t, d.toOverlay, pkt)
		d.expectCounts(t, one("to_overlay/pass", pkt))
	})
}

// The node's own VXLAN packets: leaving from the node's address to the
// overlay port they pass to_netdev (pass); arriving for the node's address
// and port with no VXLAN packet for a pod inside they go to the stack,
// whose VXLAN device takes them (to_stack; overlay_decap_test.go has the
// packets from_netdev decapsulates). A pod's UDP flow to the outside whose
// mapping was given the overlay port still gets its reply translated back
// into the pod: it is from no peer. Without the overlay (port 0), the
// same packets take the long way and come out the same.
func TestOverlayOuterPackets(t *testing.T) {
	outer := udpFlow(masqIP, 51000, peerNodeIP, vxlanPort).with("vxlan header and frame")
	arrivingOuter := udpFlow(peerNodeIP, 52000, masqIP, vxlanPort).with("vxlan header and frame")
	for _, port := range []uint16{vxlanPort, 0} {
		name := "overlay"
		if port == 0 {
			name = "no overlay"
		}
		t.Run(name, func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{OverlayPort: port})
			putPeers(t, d.peers, routedPeer(peerPodCIDR, peerNodeIP).nodeEntry())
			in := leaving(outer.ip())
			r := d.egress(t, in)
			expectVerdict(t, r, tcActOK)
			expectBytes(t, "leaving", r.out, in)
			back := arriving(arrivingOuter.ip())
			r = d.ingress(t, back)
			expectVerdict(t, r, tcActOK)
			expectBytes(t, "arriving", r.out, back)
			leavingReason := "to_netdev/pass"
			if port == 0 {
				leavingReason = "to_netdev/to_stack"
			}
			want := one(leavingReason, in)
			for k, v := range one("from_netdev/to_stack", back) {
				want[k] = v
			}
			d.expectCounts(t, want)
			d.expectMappings(t, emptyMapping)
		})
	}
	t.Run("a masqueraded flow given the overlay port", func(t *testing.T) {
		d := newSNATDatapath(t, snatSetup{OverlayPort: vxlanPort, PortMin: vxlanPort, PortMax: vxlanPort})
		send := udpFlow(podA.IP, podPort, serverIP, 53)
		out := d.egress(t, leaving(send.ip()))
		if port := d.allocatedPort(t, out.out); port != vxlanPort {
			t.Fatalf("allocated port %d, want %d", port, vxlanPort)
		}
		reply := send.from(masqIP, vxlanPort).answer(0).with("an answer")
		reply.TTL = 57
		r := d.ingress(t, arriving(reply.ip()))
		expectVerdict(t, r, tcActRedirect)
		expectBytes(t, "reply", r.out, reply.to(podA.IP, podPort).routedInto(podA))
		expectChecksums(t, r.out)
	})
}

// expectMarkedPasses runs prog on a marked packet, which must pass as it
// came with the mark taken off.
func expectMarkedPasses(t *testing.T, prog *ebpf.Program, in []byte) {
	t.Helper()
	ret, out, after, err := progrun.RunTCContext(prog, skbContext{Mark: markPeerForwarded}, in)
	if err != nil {
		t.Fatal(err)
	}
	expectVerdict(t, run{verdict: ret}, tcActOK)
	expectBytes(t, "packet", out, in)
	if after.Mark != 0 {
		t.Errorf("mark %#x left on the packet, want 0", after.Mark)
	}
}
