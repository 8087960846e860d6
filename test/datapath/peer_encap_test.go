package datapath_test

// With the overlay, from_pod puts the VXLAN headers on a pod's packet for
// another node itself (bpf/lib/peer.h, overlay_encap4) and sends it out of
// the uplink the FIB names, where the kernel can make the room
// (loader.Features.OverlayEncap); what it cannot send that way it hands to
// the overlay device with a tunnel key, as before. These run in the FIB
// namespace of peer_test.go: the uplink 192.168.1.5/24, the node
// 192.168.1.7 with a neighbour entry, 192.168.1.8 without one.

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// newEncapDatapath is newPeerDatapath with the overlay's variables set as
// the loader sets them on a node whose address is the uplink's.
func newEncapDatapath(t *testing.T, entries ...peerEntry) *datapath {
	t.Helper()
	d, _ := newEncapNode(t, entries...)
	return d
}

func newEncapNode(t *testing.T, entries ...peerEntry) (*datapath, *progrun.Node) {
	t.Helper()
	vars := map[string]any{
		maps.VarOverlayPort: networkOrder(vxlanPort),
		maps.VarOverlayAddr: uplinkAddr.Addr().As4(),
	}
	return newPeerDatapathVars(t, vars, entries...)
}

// runInFIBNetns runs from_pod on frame, as it arrives from pod A, in the
// FIB namespace (fibNetns), after setup there.
func (d *datapath) runInFIBNetns(t *testing.T, frame []byte, setup func() error) (uint32, []byte) {
	t.Helper()
	var (
		ret uint32
		out []byte
	)
	err := fibNetns(func() (err error) {
		if err := setup(); err != nil {
			return err
		}
		ret, out, err = progrun.RunTC(d.fromPod, skbContext{IngressIfindex: podA.Ifindex}, frame)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ret, out
}

// encapsulatedOut is f as from_pod sends it to node out of the uplink:
// routed one hop inside, in the overlay's headers (an outer Ethernet
// header still holding the inner one's MACs, which bpf_redirect_neigh
// replaces as the packet leaves; IPv4 from the node's address, TTL 64,
// tos the inner ECN bits, no DF; UDP to the overlay port without a
// checksum; VNI 1). The
// outer IP id and UDP source port are the packet's own (a random id, the
// flow's hash): taken from got, and checked apart.
func encapsulatedOut(f flow, node netip.Addr, tos byte, got []byte) []byte {
	f.TTL--
	inner := f.ip()
	if tos != 0 {
		inner[1] = tos
		binary.BigEndian.PutUint16(inner[10:], ipv4HeaderChecksum(inner[:20]))
	}
	outer := vxlanOuter(uplinkAddr.Addr(), node, nodeVNI, inner)
	outer.TTL = 64
	if len(got) >= 14+20+8 {
		outer.ID = binary.BigEndian.Uint16(got[14+4:])
		outer.Sport = binary.BigEndian.Uint16(got[14+20:])
	}
	ip := outer.ip()
	ip[1] = outerECN(tos)
	ip[6] &^= 0x40 // no DF
	binary.BigEndian.PutUint16(ip[10:], ipv4HeaderChecksum(ip[:20]))
	return ether(overlayMAC(node), tunnelSrcMAC, ethPIPv4, ip)
}

// outerECN is the outer tos for an inner one: its ECN bits, CE as ECT(0)
// (RFC 6040's normal mode, the kernel's tunnels').
func outerECN(tos byte) byte {
	if tos&3 == 3 {
		return 2
	}
	return tos & 3
}

// withTOS is frame (Ethernet and IPv4) with its IP tos set and the header
// checksum redone.
func withTOS(frame []byte, tos byte) []byte {
	out := append([]byte(nil), frame...)
	out[14+1] = tos
	binary.BigEndian.PutUint16(out[14+10:], ipv4HeaderChecksum(out[14:34]))
	return out
}

// A pod's packet to another node's pod or address: from_pod redirects it
// (TC_ACT_REDIRECT, out of the uplink by bpf_redirect_neigh, the node's
// neighbour entry at hand or not) in every byte as the overlay device
// would have sent it but for the outer MACs, which the redirect writes; the
// inner packet routed one hop (TTL down, checksum updated) and addressed
// to the receiving node's overlay device; counted as forward_tunnel with
// the pod's bytes. The outer source port is in the kernel's default
// ephemeral range; the outer header checksum verifies. Where the kernel
// cannot make the room (loader.Features.OverlayEncap false), the same
// packet goes to the overlay device instead, as without the overlay's
// address.
func TestFromPodEncapsulatesItself(t *testing.T) {
	requireIngressIfindex(t)
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		node netip.Addr
		f    flow
		tos  byte
	}{
		{"UDP to a pod on the node", peerNodeIP, udpFlow(podA.IP, 40730, remotePodIP, 53), 0},
		{"TCP to a pod on the node", peerNodeIP, tcpFlow(podA.IP, 40731, remotePodIP, 80, tcpSYN), 0},
		{"TCP to the node's own address", peerNodeIP, tcpFlow(podA.IP, 40732, peerNodeIP, 10250, tcpSYN), 0},
		{"DSCP and ECT(1): the ECN bits outside", peerNodeIP, udpFlow(podA.IP, 40733, remotePodIP, 53), 0xb9},
		{"congestion experienced: ECT(0) outside", peerNodeIP, udpFlow(podA.IP, 40734, remotePodIP, 53), 0xbb},
		{"the node's neighbour unknown", silentNodeIP, udpFlow(podA.IP, 40735, remotePodIP, 53), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer := tunnelPeer(peerPodCIDR, tc.node)
			d := newEncapDatapath(t, peer, peer.nodeEntry())
			in := tc.f.sentBy(podA)
			if tc.tos != 0 {
				in = withTOS(in, tc.tos)
			}
			ret, out := d.runInFIBNetns(t, in, func() error { return nil })
			if ret != tcActRedirect {
				t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", ret, tcActRedirect)
			}
			d.expectCounts(t, one("from_pod/forward_tunnel", in))
			if !f.OverlayEncap {
				t.Logf("this kernel cannot make the room (%s): the overlay device encapsulates", f.Kernel)
				want := tc.f.encapsulated(tc.node)
				if tc.tos != 0 {
					want = withTOS(want, tc.tos)
				}
				expectBytes(t, "packet", out, want)
				return
			}
			expectBytes(t, "packet", out, encapsulatedOut(tc.f, tc.node, tc.tos, out))
			expectChecksums(t, out)
			if len(out) >= 14+20+8 {
				if sport := binary.BigEndian.Uint16(out[14+20:]); sport < 32768 || sport >= 61000 {
					t.Errorf("outer UDP source port %d, want one in 32768-60999", sport)
				}
			}
		})
	}
}

// What from_pod cannot send out of the uplink itself it hands to the
// overlay device, untouched but for the inner routing (TTL, the overlay
// MACs), with the tunnel key set: a node the FIB has no route to, and a
// packet that fits the overlay but not the route to the node's
// address (mtu 1400, locked, as an administrator narrows a path: the
// FIB's check heeds a forwarded packet's route MTU only then), which the
// device sends as fragments.
// A GSO packet takes the device too (the test context cannot make one:
// test/multinode's streams do). Each counts as forward_tunnel.
func TestFromPodEncapsulationLeftToDevice(t *testing.T) {
	requireIngressIfindex(t)
	mid := udpFlow(podA.IP, 40741, remotePodIP, 53)
	mid.Payload = make([]byte, 1400-28-50+1) // inner fits 1450; outer over 1400
	for _, tc := range []struct {
		name string
		node netip.Addr
		f    flow
	}{
		{"no route to the node", farNodeIP, udpFlow(podA.IP, 40742, remotePodIP, 53)},
		{"over the route's MTU, within the overlay's", peerNodeIP, mid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer := tunnelPeer(peerPodCIDR, tc.node)
			d := newEncapDatapath(t, peer, peer.nodeEntry())
			in := tc.f.sentBy(podA)
			ret, out := d.runInFIBNetns(t, in, func() error {
				l, err := netlink.LinkByName(fibUplinkName)
				if err != nil {
					return err
				}
				return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, MTU: 1400, MTULock: true,
					Dst: &net.IPNet{IP: peerNodeIP.AsSlice(), Mask: net.CIDRMask(32, 32)}})
			})
			if ret != tcActRedirect {
				t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", ret, tcActRedirect)
			}
			expectBytes(t, "packet", out, tc.f.encapsulated(tc.node))
			expectChecksums(t, out)
			d.expectCounts(t, one("from_pod/forward_tunnel", in))
		})
	}
}

// A trace event names what the pod sent, not the VXLAN packet from_pod
// made of it: tracing a pod's address, its packet to another node's pod
// raises one event, from_pod forward_tunnel, whose tuple is the inner
// one (the pods' addresses and ports, no "was": nothing was translated);
// tracing the other node's address selects it too, by the outer header.
func TestTraceEventOfEncapsulatedPacket(t *testing.T) {
	requireIngressIfindex(t)
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	if !f.OverlayEncap {
		t.Skipf("this kernel cannot make the room (%s): from_pod does not encapsulate, and TestTraceEvents covers its events", f.Kernel)
	}
	peer := tunnelPeer(peerPodCIDR, peerNodeIP)
	flow := udpFlow(podA.IP, 40750, remotePodIP, 53)
	want := maps.Tuple{Src: podA.IP, Dst: remotePodIP, SrcPort: 40750, DstPort: 53, Proto: protoUDP}
	for _, tc := range []struct {
		name  string
		trace maps.Trace
	}{
		{"the sending pod's address", maps.Trace{Addr: podA.IP}},
		{"the receiving pod's address", maps.Trace{Addr: remotePodIP}},
		{"the other node's address", maps.Trace{Addr: peerNodeIP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, n := newEncapNode(t, peer, peer.nodeEntry())
			e := &eventsNode{fromPod: d.fromPod, config: n.Maps[maps.MapEventConfig], state: n.Maps[maps.MapEventState],
				ring: n.Maps[maps.MapEvents], counters: n.Maps[maps.MapCounters]}
			e.start(t, 1000, 1000)
			if err := maps.SetTraceMap(e.config, tc.trace); err != nil {
				t.Fatal(err)
			}
			if ret, _ := d.runInFIBNetns(t, flow.sentBy(podA), func() error { return nil }); ret != tcActRedirect {
				t.Fatalf("verdict %d, want TC_ACT_REDIRECT (%d)", ret, tcActRedirect)
			}
			evs := e.drain(t)
			if len(evs) != 1 {
				t.Fatalf("%d events, want 1: %+v", len(evs), evs)
			}
			ev := evs[0]
			if ev.Kind != "trace" || ev.Hook.String() != "from_pod" || ev.Reason.String() != "forward_tunnel" ||
				ev.Tuple != want || !ev.Orig.IsZero() {
				t.Errorf("event %s %s %s %s (was %s), want trace from_pod forward_tunnel %s", ev.Kind, ev.Hook, ev.Reason, ev.Tuple, ev.Orig, want)
			}
		})
	}
}
