package datapath_test

import (
	"net"
	"net/netip"
	"testing"
)

// A pod may only send from its own veth, with its own IP and its own MAC.
// Anything else is dropped unchanged before any routing decision, even when
// the destination is a pod on this node.
func TestSpoofedSourceDropped(t *testing.T) {
	from := func(srcMAC net.HardwareAddr, src, dst netip.Addr) []byte {
		hdr := ipv4Header{ID: 77, TTL: 64, Protocol: protoTCP, Src: src, Dst: dst}
		return ether(podA.NodeMAC, srcMAC, ethPIPv4, ipv4(hdr, tcp(src, dst, 1234, 80, []byte("spoof"))))
	}
	runUnchanged(t, []unchangedCase{
		{name: "source IP not registered", ifindex: podA.Ifindex,
			frame: from(podA.MAC, unknownIP, podB.IP), verdict: tcActShot, reason: "drop_spoofed_ip"},
		{name: "source IP of another pod", ifindex: podA.Ifindex,
			frame: from(podA.MAC, podB.IP, podB.IP), verdict: tcActShot, reason: "drop_spoofed_ip"},
		{name: "source IP and MAC of another pod", ifindex: podA.Ifindex,
			frame: from(podB.MAC, podB.IP, podA.IP), verdict: tcActShot, reason: "drop_spoofed_ip"},
		{name: "a pod's own packet arriving on another pod's veth", ifindex: podB.Ifindex,
			frame: from(podA.MAC, podA.IP, podB.IP), verdict: tcActShot, reason: "drop_spoofed_ip"},
		{name: "source IP spoofed towards the stack", ifindex: podA.Ifindex,
			frame: from(podA.MAC, internetIP, remotePodIP), verdict: tcActShot, reason: "drop_spoofed_ip"},
		// A pod's address comes from IPAM, never DHCP: 0.0.0.0 is not its own.
		{name: "unspecified source address", ifindex: podA.Ifindex,
			frame: from(podA.MAC, netip.IPv4Unspecified(), internetIP), verdict: tcActShot, reason: "drop_spoofed_ip"},
		{name: "own IP, unknown MAC", ifindex: podA.Ifindex,
			frame: from(strangerMAC, podA.IP, podB.IP), verdict: tcActShot, reason: "drop_spoofed_mac"},
		{name: "own IP, another pod's MAC", ifindex: podA.Ifindex,
			frame: from(podB.MAC, podA.IP, podB.IP), verdict: tcActShot, reason: "drop_spoofed_mac"},
		{name: "own IP, the gateway's MAC", ifindex: podA.Ifindex,
			frame: from(podA.NodeMAC, podA.IP, internetIP), verdict: tcActShot, reason: "drop_spoofed_mac"},
	})
}
