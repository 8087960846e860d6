package datapath_test

import (
	"testing"
)

// xdp_netdev drops, on the uplink, frames too short for the Ethernet or
// IPv4 header they claim and IPv4 headers with a bad version or IHL; every
// other frame passes to the stack unchanged. All counted under hook xdp.
func TestXDPNetdev(t *testing.T) {
	hdr := ipv4Header{ID: 21, TTL: 63, Protocol: protoUDP, Src: remotePodIP, Dst: podA.IP}
	nodeMAC, routerMAC := mustMAC("52:54:00:00:00:01"), mustMAC("52:54:00:00:00:fe")
	valid := ether(nodeMAC, routerMAC, ethPIPv4, ipv4(hdr, udp(remotePodIP, podA.IP, 4789, 4789, []byte("from afar"))))
	arpFrame := ether(broadcastMAC, routerMAC, ethPARP, arp(arpIPv4{Op: arpRequest, SHA: routerMAC,
		SIP: netip4("192.168.1.254"), TIP: netip4("192.168.1.10")}))
	ipv6Frame := ether(nodeMAC, routerMAC, ethPIPv6, make([]byte, 40))

	tests := []struct {
		name    string
		frame   []byte
		verdict uint32
		reason  string
	}{
		{name: "IPv4 passes", frame: valid, verdict: xdpPass, reason: "to_stack"},
		{name: "ARP passes", frame: arpFrame, verdict: xdpPass, reason: "to_stack"},
		{name: "IPv6 passes", frame: ipv6Frame, verdict: xdpPass, reason: "to_stack"},
		// Dropped here, before the stack allocates an skb for it.
		{name: "IPv4 total length beyond the frame", frame: edit(valid, func(b []byte) { b[offIPTotLen] = 0xff }),
			verdict: xdpDrop, reason: "drop_truncated"},
		{name: "IPv4 total length below the header", frame: edit(valid, func(b []byte) { b[offIPTotLen], b[offIPTotLen+1] = 0, 19 }),
			verdict: xdpDrop, reason: "drop_bad_ip_header"},
		// Under 14 bytes: see runXDP.
		{name: "empty frame", frame: []byte{}, verdict: xdpDrop, reason: "drop_truncated"},
		{name: "2-byte frame", frame: valid[:2], verdict: xdpDrop, reason: "drop_truncated"},
		{name: "13-byte frame", frame: valid[:13], verdict: xdpDrop, reason: "drop_truncated"},
		{name: "ethernet header only, ethertype IPv4", frame: valid[:ethHeaderLen], verdict: xdpDrop, reason: "drop_truncated"},
		{name: "IPv4 header cut to 19 bytes", frame: valid[:ethHeaderLen+19], verdict: xdpDrop, reason: "drop_truncated"},
		{name: "IHL 4", frame: edit(valid, func(b []byte) { b[offIPVersionIHL] = 0x44 }), verdict: xdpDrop, reason: "drop_bad_ip_header"},
		{name: "version 6 inside an IPv4 frame", frame: edit(valid, func(b []byte) { b[offIPVersionIHL] = 0x65 }),
			verdict: xdpDrop, reason: "drop_bad_ip_header"},
		{name: "ethernet header only, ethertype ARP", frame: arpFrame[:ethHeaderLen], verdict: xdpPass, reason: "to_stack"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDatapath(t, podA, podB)
			ret, out := d.runXDP(t, tc.frame)
			if ret != tc.verdict {
				t.Errorf("verdict %d, want %d", ret, tc.verdict)
			}
			expectBytes(t, "frame", out, tc.frame)
			d.expectCounts(t, one("xdp/"+tc.reason, tc.frame))
		})
	}
}
