package datapath_test

// With the overlay, a VXLAN packet another node sends to a pod of this one
// loses its outer headers in from_netdev (bpf/lib/decap.h) and is decided
// as from_overlay decides what the VXLAN device hands it: counted under
// from_overlay, delivered into the pod with bpf_redirect_peer, kept apart
// by the network its VNI carries. Whatever the decapsulation does not
// apply to reaches the stack (and the VXLAN device) exactly as it came.

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/podpath/podpath/maps"
)

// vxlanOff is where the VXLAN header starts in a frame vxlanFrame builds:
// after the outer Ethernet, IP and UDP headers.
const vxlanOff = 14 + 20 + 8

// nodeVNI is the VNI of a packet from no pod of a network (peers.vni).
const nodeVNI = 1

// vxlanFrame is inner as node from sends it through the overlay to node
// to: an Ethernet frame to to's overlay device, in a VXLAN header with
// vni, in UDP to the overlay port (without a UDP checksum, as nodes send
// it), arriving on the uplink.
func vxlanFrame(from, to netip.Addr, vni uint32, inner []byte) []byte {
	return ether(uplinkMAC, peerNodeMAC, ethPIPv4, vxlanOuter(from, to, vni, inner).ip())
}

// vxlanOuter is vxlanFrame's outer IP packet as a flow.
func vxlanOuter(from, to netip.Addr, vni uint32, inner []byte) flow {
	hdr := make([]byte, 8)
	hdr[0] = 0x08 // the I flag: the VNI is valid
	binary.BigEndian.PutUint32(hdr[4:], vni<<8)
	outer := udpFlow(from, 41234, to, vxlanPort)
	outer.NoChecksum = true
	outer.Payload = append(hdr, ether(overlayMAC(to), tunnelSrcMAC, ethPIPv4, inner)...)
	return outer
}

// newDecapDatapath is from_netdev of a node with masqIP as its address,
// the overlay port set to port (0: no overlay), and peerNodeIP a node.
func newDecapDatapath(t *testing.T, port uint16) *snatDatapath {
	t.Helper()
	d := newSNATDatapath(t, snatSetup{OverlayPort: port})
	putPeers(t, d.peers, tunnelPeer(peerPodCIDR, peerNodeIP), tunnelPeer(peerPodCIDR, peerNodeIP).nodeEntry())
	k := maps.NewEndpointKey(masqIP)
	if err := d.nodeAddrs.Put(&k, uint32(uplinkIfindex)); err != nil {
		t.Fatal(err)
	}
	return d
}

// A node's packet to a pod here arrives in the pod as the sending pod
// sent it, routed one hop (TTL down, the pod's MACs): every outer byte is
// gone, the inner ones are untouched but the TTL and header checksum. It
// is counted once, as from_overlay's forward_local.
func TestOverlayDecapDelivers(t *testing.T) {
	for _, inner := range []flow{
		tcpFlow(remotePodIP, 40000, podA.IP, 8080, tcpSYN),
		udpFlow(remotePodIP, 40001, podB.IP, 53),
	} {
		d := newDecapDatapath(t, vxlanPort)
		to := podA
		if inner.Dst == podB.IP {
			to = podB
		}
		r := d.ingress(t, vxlanFrame(peerNodeIP, masqIP, nodeVNI, inner.ip()))
		want := inner.routedInto(to)
		expectForwarded(t, r, want)
		d.expectCounts(t, one("from_overlay/forward_local", want))
		d.expectMappings(t, emptyMapping)
	}
}

// The VNI carries the sending pod's network: a pod of another network
// that does not reach it gets nothing (drop_network_isolated, counted at
// from_overlay), one of its own network or none does.
func TestOverlayDecapNetworks(t *testing.T) {
	blue, red := maps.NetworkID("blue"), maps.NetworkID("red")
	for _, tc := range []struct {
		name string
		vni  uint32
		pass bool
	}{
		{"the pod's network", blue, true},
		{"no network", nodeVNI, true},
		{"another network", red, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDecapDatapath(t, vxlanPort)
			info := podA.info()
			info.Network = blue
			if err := d.endpoints.Put(podA.IP, info); err != nil {
				t.Fatal(err)
			}
			inner := udpFlow(remotePodIP, 40002, podA.IP, 53)
			r := d.ingress(t, vxlanFrame(peerNodeIP, masqIP, tc.vni, inner.ip()))
			want := inner.routedInto(podA)
			if tc.pass {
				expectForwarded(t, r, want)
				d.expectCounts(t, one("from_overlay/forward_local", want))
				return
			}
			expectVerdict(t, r, tcActShot)
			// Dropped before routing: the length is the decapsulated
			// packet's, with the TTL as it came.
			d.expectCounts(t, one("from_overlay/drop_network_isolated", ether(uplinkMAC, peerNodeMAC, ethPIPv4, inner.ip())))
		})
	}
}

// What decapsulation does not apply to is decided as from the uplink and
// reaches the stack as it came (to_stack), for the VXLAN device and
// from_overlay to judge.
func TestOverlayDecapLeaves(t *testing.T) {
	toPod := udpFlow(remotePodIP, 40003, podA.IP, 53).ip()
	notVXLAN := vxlanFrame(peerNodeIP, masqIP, nodeVNI, toPod)
	notVXLAN[vxlanOff] = 0 // the VXLAN flags: no VNI
	innerARP := vxlanFrame(peerNodeIP, masqIP, nodeVNI, toPod)
	binary.BigEndian.PutUint16(innerARP[vxlanOff+8+12:], uint16(ethPARP))
	// The outer headers' checksums: a UDP checksum is the stack's to
	// verify, a wrong IP header checksum the stack's to drop.
	withUDPSum := vxlanOuter(peerNodeIP, masqIP, nodeVNI, toPod)
	withUDPSum.NoChecksum = false
	badIPSum := vxlanFrame(peerNodeIP, masqIP, nodeVNI, toPod)
	badIPSum[14+10] ^= 0x01 // the outer IP header checksum
	otherPort := udpFlow(peerNodeIP, 41234, masqIP, 4789).with(string(vxlanFrame(peerNodeIP, masqIP, nodeVNI, toPod)[vxlanOff:]))
	for _, tc := range []struct {
		name  string
		port  uint16
		frame []byte
	}{
		{"without the overlay", 0, vxlanFrame(peerNodeIP, masqIP, nodeVNI, toPod)},
		{"from no known node", vxlanPort, vxlanFrame(silentNodeIP, masqIP, nodeVNI, toPod)},
		{"for the node itself", vxlanPort, vxlanFrame(peerNodeIP, masqIP, nodeVNI, udpFlow(remotePodIP, 40004, masqIP, 53).ip())},
		{"for no pod here", vxlanPort, vxlanFrame(peerNodeIP, masqIP, nodeVNI, udpFlow(remotePodIP, 40005, otherPodIP, 53).ip())},
		{"to another port", vxlanPort, arriving(otherPort.ip())},
		{"without a valid VNI", vxlanPort, notVXLAN},
		{"not IPv4 inside", vxlanPort, innerARP},
		{"with a UDP checksum", vxlanPort, ether(uplinkMAC, peerNodeMAC, ethPIPv4, withUDPSum.ip())},
		{"with a wrong IP header checksum", vxlanPort, badIPSum},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDecapDatapath(t, tc.port)
			r := d.ingress(t, tc.frame)
			expectVerdict(t, r, tcActOK)
			expectBytes(t, "packet", r.out, tc.frame)
			d.expectCounts(t, one("from_netdev/to_stack", tc.frame))
		})
	}
}
