package datapath_test

import (
	"encoding/binary"
	"testing"

	"github.com/podpath/podpath/internal/csum"
)

// Packets to the VIP that cannot be translated. A non-first IPv4 fragment
// carries no ports (its payload starts mid-datagram): without its first
// fragment seen before it, its translation is unknown and it is dropped
// with its own reason (fragment_test.go has the datagrams that work). A TCP or UDP packet whose IPv4
// total length leaves no room for the ports is truncated and dropped, even
// when the frame carries bytes beyond the IPv4 packet (Ethernet padding):
// those are not part of the packet. Nothing enters conntrack.
func TestServiceNotTranslatable(t *testing.T) {
	syn := tcpFlow(podA.IP, 40400, vip, vipPort, tcpSYN)
	// The data of a non-first fragment, made to look like the start of a
	// TCP header to VIP:80, so a parser that read it as one would translate.
	looksLikePorts := tcpSegment(podA.IP, vip, 40400, vipPort, tcpSYN, []byte("rest of the datagram"))
	tests := []struct {
		name    string
		frame   []byte
		verdict uint32
		reason  string
	}{
		{name: "non-first fragment, more to follow", verdict: tcActShot, reason: "drop_frag_unknown",
			frame: fragment(syn, looksLikePorts, 0x2000|185)},
		{name: "last fragment", verdict: tcActShot, reason: "drop_frag_unknown",
			frame: fragment(syn, looksLikePorts, 370)},
		{name: "TCP: the IPv4 header and nothing after it", verdict: tcActShot, reason: "drop_truncated",
			frame: cutL4(syn, 0, nil)},
		{name: "TCP: 3 bytes after the IPv4 header", verdict: tcActShot, reason: "drop_truncated",
			frame: cutL4(syn, 3, nil)},
		{name: "TCP: 2 bytes of TCP, then Ethernet padding to 60 bytes", verdict: tcActShot, reason: "drop_truncated",
			frame: cutL4(syn, 2, make([]byte, 60-ethHeaderLen-ipv4HeaderLen-2))},
		{name: "TCP: 2 bytes of TCP, then a trailer that reads as port 80", verdict: tcActShot, reason: "drop_truncated",
			frame: cutL4(syn, 2, append([]byte{0x00, 0x50}, make([]byte, 22)...))},
		{name: "UDP: 3 bytes after the IPv4 header", verdict: tcActShot, reason: "drop_truncated",
			frame: cutL4(udpFlow(podA.IP, 40401, vip, vipPort), 3, nil)},
		// The rewrite patches the checksum field: a header that ends before
		// it is as truncated as one without ports.
		{name: "TCP: header cut before its checksum", verdict: tcActShot, reason: "drop_truncated",
			frame: cutL4(syn, 16, nil)},
		{name: "TCP: header cut before its checksum, then Ethernet padding", verdict: tcActShot, reason: "drop_truncated",
			frame: cutL4(syn, 16, make([]byte, 8))},
		{name: "UDP: header cut before its checksum", verdict: tcActShot, reason: "drop_truncated",
			frame: cutL4(udpFlow(podA.IP, 40401, vip, vipPort), 6, nil)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newServiceDatapath(t, clusterIP(protoTCP, backendB), clusterIP(protoUDP, backendB))
			r := d.send(t, podA, tc.frame)
			if r.verdict != tc.verdict {
				t.Errorf("verdict %d, want %d", r.verdict, tc.verdict)
			}
			expectBytes(t, "packet", r.out, tc.frame)
			d.expectCounts(t, one("from_pod/"+tc.reason, tc.frame))
			if n := len(d.ctAll(t)); n != 0 {
				t.Errorf("%d conntrack entries, want none", n)
			}
		})
	}
}

// fragment is a fragment of f's datagram from A: f's IPv4 header with the
// flags and offset field frag, carrying data.
func fragment(f flow, data []byte, frag uint16) []byte {
	ip := ipv4(ipv4Header{ID: f.ID, TTL: f.TTL, Protocol: f.Proto, Src: f.Src, Dst: f.Dst}, data)
	binary.BigEndian.PutUint16(ip[6:], frag)
	binary.BigEndian.PutUint16(ip[10:], 0)
	binary.BigEndian.PutUint16(ip[10:], csum.Checksum(ip[:ipv4HeaderLen], 0))
	return ether(podA.NodeMAC, podA.MAC, ethPIPv4, ip)
}

// cutL4 is f from A with only the first n bytes of its TCP or UDP header,
// the IPv4 total length saying so, followed in the frame by trailer.
func cutL4(f flow, n int, trailer []byte) []byte {
	ip := ipv4(ipv4Header{ID: f.ID, TTL: f.TTL, Protocol: f.Proto, Src: f.Src, Dst: f.Dst}, f.l4()[:n])
	return append(ether(podA.NodeMAC, podA.MAC, ethPIPv4, ip), trailer...)
}
