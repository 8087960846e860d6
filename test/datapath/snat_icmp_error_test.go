package datapath_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/podpath/podpath/internal/csum"
)

// icmpErrorCase is an ICMP error about a pod's masqueraded flow: the pod
// sends the flow, it leaves through to_netdev as node:P, and a host on the
// way (or the destination) answers with an error quoting the first
// quoteLen bytes (0: all) of the packet as it left.
type icmpErrorCase struct {
	name       string
	send       flow
	from       netip.Addr
	typ, code  uint8
	rest       uint32
	quoteLen   int
	wantQuoted bool // the quote includes the L4 checksum
}

// An ICMP error about a masqueraded flow is translated back to the pod that
// owns the flow and delivered into it (routed one hop, as a reply): the
// outer destination becomes the pod; in the quote, the source address and
// port become the pod's and the quoted IPv4 header checksum follows; the
// ICMP checksum is correct over the changed quote. Every byte is compared
// with an error built here from the flow as the pod sent it. Where the quote
// reaches the TCP or UDP checksum, it is the one the pod computed again.
func TestSNATICMPError(t *testing.T) {
	tcpSyn := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN).with("a SYN with data, to fill a packet")
	udpDgram := udpFlow(podA.IP, podPort, serverIP, serverPort)
	tests := []icmpErrorCase{
		{name: "fragmentation needed about TCP, whole packet quoted", send: tcpSyn, from: routerIP,
			typ: icmpDestUnreach, code: 4, rest: 1400, wantQuoted: true},
		{name: "fragmentation needed about TCP, RFC 792's 8 bytes quoted", send: tcpSyn, from: routerIP,
			typ: icmpDestUnreach, code: 4, rest: 1400, quoteLen: ipv4HeaderLen + 8},
		{name: "fragmentation needed about UDP", send: udpDgram, from: routerIP,
			typ: icmpDestUnreach, code: 4, rest: 1400, wantQuoted: true},
		{name: "port unreachable from the server about UDP, 8 bytes quoted", send: udpDgram, from: serverIP,
			typ: icmpDestUnreach, code: 3, quoteLen: ipv4HeaderLen + 8, wantQuoted: true},
		{name: "time exceeded about TCP", send: tcpSyn, from: routerIP,
			typ: icmpTimeExceeded, code: 0, wantQuoted: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{})
			out := d.egress(t, leaving(tc.send.ip()))
			expectVerdict(t, out, tcActOK)
			port := d.allocatedPort(t, out.out)
			left := tc.send.from(masqIP, port)
			n := tc.quoteLen
			if n == 0 {
				n = len(left.ip())
			}
			errMsg := icmpError{Src: tc.from, Dst: masqIP, Type: tc.typ, Code: tc.code, Rest: tc.rest,
				Quote: left.ip()[:n], TTL: 60}
			in := arriving(errMsg.ip())
			before := d.mappings(t)

			r := d.ingress(t, in)

			// The quote as the pod must see it: its own address and port as
			// source, a fresh header checksum, and the L4 header as the pod
			// sent it, checksum included: the pod's stack may match it.
			l4 := tc.send.l4()
			wantQuote := ipv4(ipv4Header{ID: left.ID, TTL: left.TTL, Protocol: left.Proto, Src: tc.send.Src, Dst: left.Dst}, l4)[:n]
			wantErr := errMsg
			wantErr.Dst, wantErr.Quote, wantErr.TTL = podA.IP, wantQuote, errMsg.TTL-1

			expectVerdict(t, r, tcActRedirect)
			expectBytes(t, "packet", r.out, delivered(podA, wantErr.ip()))
			expectSNATChecksums(t, r.out)
			quote := l4Of(r.out)[8:]
			if qh := quote[:ipv4HeaderLen]; !csum.Valid(qh, 0) || binary.BigEndian.Uint16(qh[10:]) != ipv4HeaderChecksum(qh) {
				t.Errorf("quoted IPv4 header checksum %#04x, a fresh computation gives %#04x",
					binary.BigEndian.Uint16(qh[10:]), ipv4HeaderChecksum(qh))
			}
			if tc.wantQuoted {
				off := ipv4HeaderLen + 16
				if tc.send.Proto == protoUDP {
					off = ipv4HeaderLen + 6
				}
				sent := binary.BigEndian.Uint16(tc.send.l4()[off-ipv4HeaderLen:])
				if got := binary.BigEndian.Uint16(quote[off:]); got != sent {
					t.Errorf("quoted L4 checksum %#04x, want %#04x as the pod sent it (node:%d's is %#04x)", got, sent, port,
						binary.BigEndian.Uint16(left.l4()[off-ipv4HeaderLen:]))
				}
			}
			if after := d.mappings(t); !mapsEqualNAT(after, before) {
				t.Errorf("snat entries changed:\n got  %v\n want %v", after, before)
			}
			d.expectCounts(t, counts{
				"to_netdev/snat":            {1, uint64(len(out.out))},
				"from_netdev/forward_local": {1, uint64(len(in))},
			})
		})
	}
}

// ICMP errors for the node that are about no live masqueraded flow go to
// the stack as they came: a quote of a port without mapping, a quote whose
// source is not the node's SNAT address, a quote of a mapping that has
// expired (replies to it are not translated either), and a quote that ends
// (by the outer IPv4 total length) before the ports, even when the frame
// carries bytes after the packet that read as them: those are not the
// packet's (Ethernet padding, a trailer).
func TestSNATICMPErrorNotTranslated(t *testing.T) {
	syn := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
	fragNeeded := func(quote []byte) icmpError {
		return icmpError{Src: routerIP, Dst: masqIP, Type: icmpDestUnreach, Code: 4, Rest: 1400, Quote: quote, TTL: 60}
	}
	tests := []struct {
		name   string
		expire bool
		frame  func(port uint16) []byte // the error as it arrives, given the flow's port
	}{
		{name: "about a port without mapping", frame: func(port uint16) []byte {
			return arriving(fragNeeded(syn.from(masqIP, otherPort(port)).ip()).ip())
		}},
		{name: "about a packet from another address", frame: func(port uint16) []byte {
			return arriving(fragNeeded(syn.from(netip4("10.0.0.2"), port).ip()).ip())
		}},
		{name: "about an expired mapping", expire: true, frame: func(port uint16) []byte {
			return arriving(fragNeeded(syn.from(masqIP, port).ip()).ip())
		}},
		{name: "quote cut before the ports, a trailer reads as them", frame: func(port uint16) []byte {
			left := syn.from(masqIP, port).ip()
			frame := arriving(fragNeeded(left[:ipv4HeaderLen]).ip())
			return append(frame, left[ipv4HeaderLen:ipv4HeaderLen+8]...)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{})
			out := d.egress(t, leaving(syn.ip()))
			expectVerdict(t, out, tcActOK)
			port := d.allocatedPort(t, out.out)
			if tc.expire {
				d.expire(t, natKey(protoTCP, serverIP, serverPort, masqIP, port))
			}
			before := d.mappings(t)
			in := tc.frame(port)

			r := d.ingress(t, in)

			expectVerdict(t, r, tcActOK)
			expectBytes(t, "packet", r.out, in)
			d.expectCounts(t, counts{
				"to_netdev/snat":       {1, uint64(len(out.out))},
				"from_netdev/to_stack": {1, uint64(len(in))},
			})
			if after := d.mappings(t); !mapsEqualNAT(after, before) {
				t.Errorf("snat entries changed:\n got  %v\n want %v", after, before)
			}
		})
	}
}
