package datapath_test

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/podpath/podpath/maps"
)

// A pod's TCP SYN to a host on the internet leaves the node masqueraded:
// the source becomes the node address and a port from the configured range,
// nothing else in the frame changes but the IPv4 and TCP checksums, which
// are exactly what a fresh computation gives. Two snat entries record the
// mapping: forward under the pod's tuple (-> node:P) and reverse under the
// reply's tuple (server:443 -> node:P, flagged reverse, -> pod:40000), both
// with the handshake's lifetime of 60 s. The next packet of the flow finds
// the forward entry and leaves with the same port, allocating nothing.
func TestSNATEgressTCP(t *testing.T) {
	d := newSNATDatapath(t, snatSetup{})
	syn := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
	in := leaving(syn.ip())

	r := d.egress(t, in)

	expectVerdict(t, r, tcActOK)
	port := d.allocatedPort(t, r.out)
	expectTuple(t, r.out, addrPort(masqIP, port), addrPort(serverIP, serverPort))
	expectBytes(t, "packet", r.out, leaving(syn.from(masqIP, port).ip()))
	expectChecksums(t, r.out)
	fk := natKey(protoTCP, podA.IP, podPort, serverIP, serverPort)
	rk := natKey(protoTCP, serverIP, serverPort, masqIP, port)
	d.expectMappings(t, map[maps.CtKey]maps.NatEntry{fk: forwardEntry(port), rk: reverseEntry(podA.IP, podPort)})
	d.expectExpiry(t, fk, r, lifetimeTCPSyn, 0)
	d.expectExpiry(t, rk, r, lifetimeTCPSyn, 0)
	d.expectCounts(t, one("to_netdev/snat", in))
	d.expectStats(t, map[string]uint64{"allocated": 1})

	ack := syn.with("GET / HTTP/1.1\r\n\r\n")
	ack.TCPFlags = tcpACK | tcpPSH
	in2 := leaving(ack.ip())
	r = d.egress(t, in2)

	expectVerdict(t, r, tcActOK)
	expectBytes(t, "second packet", r.out, leaving(ack.from(masqIP, port).ip()))
	expectChecksums(t, r.out)
	d.expectMappings(t, map[maps.CtKey]maps.NatEntry{fk: forwardEntry(port), rk: reverseEntry(podA.IP, podPort)})
	d.expectCounts(t, counts{"to_netdev/snat": {2, uint64(len(in) + len(in2))}})
	d.expectStats(t, map[string]uint64{"allocated": 1})
}

// The translation of TCP and UDP in its variants. Every frame is compared
// whole with one built from the flow as it must leave: node address and the
// allocated port as source, checksums fresh. A UDP datagram sent without a
// checksum leaves without one; one whose new checksum computes to zero
// leaves with 0xffff, as UDP spells zero (RFC 768); IP options move the
// ports, not the translation.
func TestSNATEgressVariants(t *testing.T) {
	udpF := udpFlow(podA.IP, podPort, serverIP, serverPort)
	noCsum := udpF
	noCsum.NoChecksum = true
	// The one port the range offers makes the new checksum compute to zero.
	zeroPort := withSportWhere(udpF.from(masqIP, 0), computedZero).Sport
	withOpts := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
	withOpts.Options = []byte{0x94, 0x04, 0x00, 0x00} // router alert
	tests := []struct {
		name  string
		setup snatSetup
		send  flow
	}{
		{name: "UDP with a checksum", send: udpF},
		{name: "UDP without a checksum keeps none", send: noCsum},
		{name: "UDP whose new checksum computes to zero", send: udpF,
			setup: snatSetup{PortMin: zeroPort, PortMax: zeroPort}},
		{name: "TCP with IPv4 options", send: withOpts},
		{name: "TCP with data", send: tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpACK|tcpPSH).with("some data, odd length")},
		{name: "pod B's UDP", send: udpFlow(podB.IP, 53000, serverIP, 53)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, tc.setup)
			in := leaving(tc.send.ip())

			r := d.egress(t, in)

			expectVerdict(t, r, tcActOK)
			port := d.allocatedPort(t, r.out)
			expectTuple(t, r.out, addrPort(masqIP, port), addrPort(tc.send.Dst, tc.send.Dport))
			expectBytes(t, "packet", r.out, leaving(tc.send.from(masqIP, port).ip()))
			expectChecksums(t, r.out)
			csum := l4ChecksumField(r.out)
			switch {
			case tc.send.NoChecksum && csum != 0:
				t.Errorf("UDP checksum %#04x, want 0: sent without one", csum)
			case tc.setup.PortMin == zeroPort && csum != 0xffff:
				t.Errorf("UDP checksum %#04x, want 0xffff: a computed zero", csum)
			}
			fk := natKey(tc.send.Proto, tc.send.Src, tc.send.Sport, tc.send.Dst, tc.send.Dport)
			rk := natKey(tc.send.Proto, tc.send.Dst, tc.send.Dport, masqIP, port)
			d.expectMappings(t, map[maps.CtKey]maps.NatEntry{fk: forwardEntry(port), rk: reverseEntry(tc.send.Src, tc.send.Sport)})
			// The first packet gives both halves the lifetime of a flow
			// that has seen no flags yet.
			d.expectExpiry(t, fk, r, lifetimeOf(tc.send.answer(0)), 0)
			d.expectExpiry(t, rk, r, lifetimeOf(tc.send.answer(0)), 0)
			d.expectCounts(t, one("to_netdev/snat", in))
			d.expectStats(t, map[string]uint64{"allocated": 1})
		})
	}
}

// An ICMP echo request is masqueraded with its identifier as the port: the
// identifier becomes the allocated one and the ICMP checksum follows it.
// ICMP has no pseudo header, so the address change alone leaves the ICMP
// checksum as it was: with the pod's identifier equal to the one port on
// offer, the ICMP message leaves byte for byte as sent. The mapping is keyed
// by the identifier as source port (forward) and destination port
// (reverse), the other port zero; the next request with the same
// identifier reuses it.
func TestSNATEgressICMPEcho(t *testing.T) {
	const id = 0x1234
	ping := echoRequest(podA.IP, id, serverIP)
	tests := []struct {
		name  string
		setup snatSetup
	}{
		{name: "identifier becomes the allocated port"},
		{name: "identifier already the only port: ICMP message untouched", setup: snatSetup{PortMin: id, PortMax: id}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, tc.setup)
			in := leaving(ping.ip())

			r := d.egress(t, in)

			expectVerdict(t, r, tcActOK)
			port := d.allocatedPort(t, r.out)
			want := leaving(ping.from(masqIP, port).ip())
			expectBytes(t, "packet", r.out, want)
			expectSNATChecksums(t, r.out)
			if port == id {
				if got, sent := l4Of(r.out), l4Of(in); !slices.Equal(got, sent) {
					t.Errorf("ICMP message changed with the address only:\n got  % x\n sent % x", got, sent)
				}
			} else if binary.BigEndian.Uint16(l4Of(r.out)[2:]) == binary.BigEndian.Uint16(l4Of(in)[2:]) {
				t.Errorf("ICMP checksum unchanged although the identifier changed")
			}
			fk := natKey(protoICMP, podA.IP, id, serverIP, 0)
			rk := natKey(protoICMP, serverIP, 0, masqIP, port)
			d.expectMappings(t, map[maps.CtKey]maps.NatEntry{fk: forwardEntry(port), rk: reverseEntry(podA.IP, id)})
			d.expectExpiry(t, fk, r, lifetimeNonTCP, 0)
			d.expectExpiry(t, rk, r, lifetimeNonTCP, 0)

			next := ping
			next.Seq = 2
			in2 := leaving(next.ip())
			r = d.egress(t, in2)
			expectVerdict(t, r, tcActOK)
			expectBytes(t, "second request", r.out, leaving(next.from(masqIP, port).ip()))
			expectSNATChecksums(t, r.out)
			d.expectCounts(t, counts{"to_netdev/snat": {2, uint64(len(in) + len(in2))}})
			d.expectStats(t, map[string]uint64{"allocated": 1})
		})
	}
}

// Each direction's entry accounts for every packet it translated: packets,
// bytes and the TCP flags seen, the first packet included. After SYN out,
// SYN-ACK in and ACK out, the forward entry has seen two packets (SYN|ACK),
// the reverse one (SYN|ACK); the established flow's mapping lives 6 hours
// in the direction that has seen an ACK.
func TestSNATFlowAccounting(t *testing.T) {
	d := newSNATDatapath(t, snatSetup{})
	syn := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
	synIn := leaving(syn.ip())
	r := d.egress(t, synIn)
	expectVerdict(t, r, tcActOK)
	port := d.allocatedPort(t, r.out)

	synAck := syn.from(masqIP, port).answer(tcpSYN | tcpACK)
	synAckIn := arriving(synAck.ip())
	rIn := d.ingress(t, synAckIn)
	expectVerdict(t, rIn, tcActRedirect)

	ack := syn
	ack.TCPFlags = tcpACK
	ackIn := leaving(ack.ip())
	r = d.egress(t, ackIn)
	expectVerdict(t, r, tcActOK)

	fk := natKey(protoTCP, podA.IP, podPort, serverIP, serverPort)
	rk := natKey(protoTCP, serverIP, serverPort, masqIP, port)
	got := d.mappings(t)
	wantFwd := forwardEntry(port)
	wantFwd.Packets, wantFwd.Bytes, wantFwd.TcpFlags = 2, uint64(len(synIn)+len(ackIn)), tcpSYN|tcpACK
	wantRev := reverseEntry(podA.IP, podPort)
	wantRev.Packets, wantRev.Bytes, wantRev.TcpFlags = 1, uint64(len(synAckIn)), tcpSYN|tcpACK
	for _, c := range []struct {
		what string
		k    maps.CtKey
		want maps.NatEntry
	}{{"forward", fk, wantFwd}, {"reverse", rk, wantRev}} {
		e := got[c.k]
		e.Expires = 0
		if e != c.want {
			t.Errorf("%s entry:\n got  %+v\n want %+v", c.what, e, c.want)
		}
	}
	d.expectExpiry(t, fk, r, lifetimeTCPEstablished, 0)
	d.expectExpiry(t, rk, rIn, lifetimeTCPEstablished, 0)
}
