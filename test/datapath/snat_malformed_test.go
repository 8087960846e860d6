package datapath_test

import (
	"testing"
)

// cutOnUplink is f with only the first n bytes of its TCP or UDP header,
// the IPv4 total length saying so, followed in the frame by trailer; wrap
// puts it on the uplink in its direction.
func cutOnUplink(f flow, n int, trailer []byte, wrap func([]byte) []byte) []byte {
	ip := ipv4(ipv4Header{ID: f.ID, TTL: f.TTL, Protocol: f.Proto, Src: f.Src, Dst: f.Dst}, f.l4()[:n])
	return append(wrap(ip), trailer...)
}

// A TCP or UDP header that the IPv4 total length cuts before its checksum
// cannot be translated: the rewrite patches that checksum. Bytes after the
// IPv4 packet (Ethernet padding) do not make up for it. On the way out the
// stack built or routed the packet, and to_netdev does not judge it: it
// leaves unchanged, counted as to_stack, and allocates nothing. On the way
// in, from_netdev drops it as truncated, unchanged, even when a mapping for
// its tuple exists, and the mapping is not touched.
func TestSNATTruncated(t *testing.T) {
	syn := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
	dgram := udpFlow(podA.IP, podPort, serverIP, serverPort)
	tests := []struct {
		name string
		send flow // the pod's flow; the cut packet is it, or its reply
		n    int  // bytes of the L4 header left
		pad  []byte
	}{
		{name: "TCP cut before its checksum", send: syn, n: 16},
		{name: "TCP cut before its checksum, then Ethernet padding", send: syn, n: 16, pad: make([]byte, 8)},
		{name: "TCP with only its ports", send: syn, n: 4},
		{name: "UDP cut before its checksum", send: dgram, n: 6},
		{name: "UDP cut before its checksum, then Ethernet padding", send: dgram, n: 6, pad: make([]byte, 12)},
	}
	for _, tc := range tests {
		t.Run("to_netdev: "+tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{})
			in := cutOnUplink(tc.send, tc.n, tc.pad, leaving)

			r := d.egress(t, in)

			expectVerdict(t, r, tcActOK)
			expectBytes(t, "packet", r.out, in)
			d.expectCounts(t, one("to_netdev/to_stack", in))
			d.expectMappings(t, emptyMapping)
			d.expectStats(t, noNATStats)
		})
		t.Run("from_netdev: "+tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{})
			out := d.egress(t, leaving(tc.send.ip()))
			expectVerdict(t, out, tcActOK)
			port := d.allocatedPort(t, out.out)
			before := d.mappings(t)
			in := cutOnUplink(tc.send.from(masqIP, port).answer(tcpSYN|tcpACK), tc.n, tc.pad, arriving)

			r := d.ingress(t, in)

			expectVerdict(t, r, tcActShot)
			expectBytes(t, "packet", r.out, in)
			d.expectCounts(t, counts{
				"to_netdev/snat":             {1, uint64(len(out.out))},
				"from_netdev/drop_truncated": {1, uint64(len(in))},
			})
			if after := d.mappings(t); !mapsEqualNAT(after, before) {
				t.Errorf("snat entries changed:\n got  %v\n want %v", after, before)
			}
		})
	}
}
