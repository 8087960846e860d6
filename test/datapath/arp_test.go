package datapath_test

import (
	"net"
	"net/netip"
	"testing"
)

// A pod's ARP goes to the host stack (which answers for the gateway) only
// when it speaks for the pod that owns the veth: sender IP and sender MAC
// are the endpoint's, and the frame's source MAC is the sender MAC. Anything
// else could poison the node's neighbour table and is dropped unchanged.
func TestARPFromPod(t *testing.T) {
	frame := func(ethSrc net.HardwareAddr, a arpIPv4) []byte {
		return ether(broadcastMAC, ethSrc, ethPARP, arp(a))
	}
	request := func(sha net.HardwareAddr, sip netip.Addr) arpIPv4 {
		return arpIPv4{Op: arpRequest, SHA: sha, SIP: sip, TIP: gatewayIP}
	}
	notEthernet := arp(request(podA.MAC, podA.IP))
	notEthernet[1] = 6 // hardware type IEEE 802
	longHW := arp(request(podA.MAC, podA.IP))
	longHW[4] = 8 // hardware address length 8

	runUnchanged(t, []unchangedCase{
		{name: "request for the gateway", ifindex: podA.Ifindex,
			frame: frame(podA.MAC, request(podA.MAC, podA.IP)), verdict: tcActOK, reason: "arp_to_stack"},
		{name: "gratuitous reply for its own address", ifindex: podA.Ifindex,
			frame:   frame(podA.MAC, arpIPv4{Op: arpReply, SHA: podA.MAC, SIP: podA.IP, THA: broadcastMAC, TIP: podA.IP}),
			verdict: tcActOK, reason: "arp_to_stack"},
		{name: "another pod's IP", ifindex: podA.Ifindex,
			frame: frame(podA.MAC, request(podA.MAC, podB.IP)), verdict: tcActShot, reason: "drop_spoofed_arp"},
		{name: "another pod's IP and MAC", ifindex: podA.Ifindex,
			frame: frame(podB.MAC, request(podB.MAC, podB.IP)), verdict: tcActShot, reason: "drop_spoofed_arp"},
		{name: "an unregistered IP", ifindex: podA.Ifindex,
			frame: frame(podA.MAC, request(podA.MAC, unknownIP)), verdict: tcActShot, reason: "drop_spoofed_arp"},
		{name: "the gateway's IP", ifindex: podA.Ifindex,
			frame:   frame(podA.MAC, arpIPv4{Op: arpReply, SHA: podA.MAC, SIP: gatewayIP, TIP: podB.IP}),
			verdict: tcActShot, reason: "drop_spoofed_arp"},
		{name: "own IP, another MAC", ifindex: podA.Ifindex,
			frame: frame(strangerMAC, request(strangerMAC, podA.IP)), verdict: tcActShot, reason: "drop_spoofed_arp"},
		{name: "sender MAC differs from the frame's source", ifindex: podA.Ifindex,
			frame: frame(podA.MAC, request(strangerMAC, podA.IP)), verdict: tcActShot, reason: "drop_spoofed_arp"},
		{name: "frame's source differs from the sender MAC", ifindex: podA.Ifindex,
			frame: frame(strangerMAC, request(podA.MAC, podA.IP)), verdict: tcActShot, reason: "drop_spoofed_arp"},
		{name: "own ARP on another pod's veth", ifindex: podB.Ifindex,
			frame: frame(podA.MAC, request(podA.MAC, podA.IP)), verdict: tcActShot, reason: "drop_spoofed_arp"},
		// RFC 5227 probes carry sender IP 0.0.0.0; no endpoint owns it, so
		// address conflict detection inside a pod gets no answer.
		{name: "address probe from 0.0.0.0", ifindex: podA.Ifindex,
			frame:   frame(podA.MAC, arpIPv4{Op: arpRequest, SHA: podA.MAC, SIP: netip.IPv4Unspecified(), TIP: podA.IP}),
			verdict: tcActShot, reason: "drop_spoofed_arp"},
		{name: "hardware type not Ethernet", ifindex: podA.Ifindex,
			frame: ether(broadcastMAC, podA.MAC, ethPARP, notEthernet), verdict: tcActShot, reason: "drop_unsupported_l3"},
		{name: "hardware address length 8", ifindex: podA.Ifindex,
			frame: ether(broadcastMAC, podA.MAC, ethPARP, longHW), verdict: tcActShot, reason: "drop_unsupported_l3"},
	})
}
