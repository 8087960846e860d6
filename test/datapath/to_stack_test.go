package datapath_test

import (
	"net/netip"
	"testing"
)

// A legitimate packet to anything that is not a pod on this node is handed
// to the host stack unchanged (TC_ACT_OK): the stack routes it, TTL and all.
func TestUnknownDestinationToStack(t *testing.T) {
	to := func(dst netip.Addr, l4 func(src, dst netip.Addr) []byte) []byte {
		hdr := ipv4Header{ID: 5, TTL: 64, Protocol: protoUDP, Src: podA.IP, Dst: dst}
		if l4 == nil {
			l4 = func(s, d netip.Addr) []byte { return udp(s, d, 40000, 53, []byte("query")) }
		} else {
			hdr.Protocol = protoTCP
		}
		return ether(podA.NodeMAC, podA.MAC, ethPIPv4, ipv4(hdr, l4(podA.IP, dst)))
	}
	tcpTo := func(s, d netip.Addr) []byte { return tcp(s, d, 40000, 443, []byte("GET /")) }
	runUnchanged(t, []unchangedCase{
		{name: "a pod on another node", ifindex: podA.Ifindex, frame: to(remotePodIP, nil),
			verdict: tcActOK, reason: "to_stack"},
		{name: "the internet over tcp", ifindex: podA.Ifindex, frame: to(internetIP, tcpTo),
			verdict: tcActOK, reason: "to_stack"},
		{name: "the gateway address", ifindex: podA.Ifindex, frame: to(gatewayIP, nil),
			verdict: tcActOK, reason: "to_stack"},
		{name: "an unregistered address in the pod CIDR", ifindex: podA.Ifindex, frame: to(unknownIP, nil),
			verdict: tcActOK, reason: "to_stack"},
		{name: "limited broadcast", ifindex: podA.Ifindex, frame: to(netip.MustParseAddr("255.255.255.255"), nil),
			verdict: tcActOK, reason: "to_stack"},
		{name: "multicast", ifindex: podA.Ifindex, frame: to(netip.MustParseAddr("224.0.0.251"), nil),
			verdict: tcActOK, reason: "to_stack"},
	})
}
