package datapath_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/podpath/podpath/maps"
)

// The first packet of a connection to a ClusterIP gets a backend: the
// destination address and port become the backend's, both checksums are
// patched to exactly what a fresh computation gives, and the packet is
// routed like any pod-to-pod packet (TTL down by one, the backend pod's MAC
// and gateway MAC). Conntrack gets two entries: the forward one under the
// original tuple with the backend and service ids, the reply one under the
// tuple the backend answers with, holding the frontend to restore. A SYN
// gives both the handshake lifetime.
//
// BPF_PROG_RUN builds its skb with CHECKSUM_NONE, so these are full-checksum
// packets. A pod's TCP usually leaves its veth CHECKSUM_PARTIAL (only the
// pseudo-header sum in the field); that case cannot be built through
// BPF_PROG_RUN and is covered end to end only.
func TestServiceClusterIPNewFlow(t *testing.T) {
	syn := tcpFlow(podA.IP, 40000, vip, vipPort, tcpSYN)
	withOptions := syn
	withOptions.Options = []byte{0x94, 0x04, 0x00, 0x00} // router alert
	ttl2 := syn
	ttl2.TTL = 2
	tests := []struct {
		name     string
		send     flow
		trailer  []byte // Ethernet padding after the IP packet
		backend  backend
		verdict  uint32
		reason   string
		lifetime time.Duration
	}{
		{name: "TCP SYN to VIP:80 goes to B:8080 on this node", send: syn, backend: beB,
			verdict: tcActRedirect, reason: "forward_local", lifetime: lifetimeTCPSyn},
		{name: "TCP SYN to C:8080", send: syn.with("fast open data"), backend: beC,
			verdict: tcActRedirect, reason: "forward_local", lifetime: lifetimeTCPSyn},
		{name: "TCP SYN with IP options", send: withOptions, backend: beB,
			verdict: tcActRedirect, reason: "forward_local", lifetime: lifetimeTCPSyn},
		{name: "TCP SYN arriving with TTL 2 leaves with TTL 1", send: ttl2, backend: beB,
			verdict: tcActRedirect, reason: "forward_local", lifetime: lifetimeTCPSyn},
		{name: "Ethernet padding after the packet is kept", send: syn, backend: beB,
			trailer: bytes.Repeat([]byte{0xa5}, 6),
			verdict: tcActRedirect, reason: "forward_local", lifetime: lifetimeTCPSyn},
		{name: "translated TCP checksum is 0x0000",
			send:    withSportWhere(syn, func(f flow) bool { return computedZero(f.to(podB.IP, backendPort)) }),
			backend: beB, verdict: tcActRedirect, reason: "forward_local", lifetime: lifetimeTCPSyn},
		{name: "TCP checksum 0x0000 before translation",
			send:    withSportWhere(syn, computedZero),
			backend: beB, verdict: tcActRedirect, reason: "forward_local", lifetime: lifetimeTCPSyn},
		{name: "ACK without conntrack entry (mid-connection) gets the established lifetime",
			send: tcpFlow(podA.IP, 40000, vip, vipPort, tcpACK|tcpPSH).with("GET /"), backend: beB,
			verdict: tcActRedirect, reason: "forward_local", lifetime: lifetimeTCPEstablished},
		// The stack routes it on, TTL and MACs being its business.
		{name: "TCP SYN to a backend on another node: translated, to the stack", send: syn, backend: beRemote,
			verdict: tcActOK, reason: "to_stack", lifetime: lifetimeTCPSyn},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newServiceDatapath(t, clusterIP(protoTCP, tc.backend.ID))
			in := append(tc.send.sentBy(podA), tc.trailer...)
			want := append(deliveredVia(tc.send, tc.backend, podA), tc.trailer...)

			r := d.send(t, podA, in)

			if r.verdict != tc.verdict {
				t.Errorf("verdict %d, want %d", r.verdict, tc.verdict)
			}
			expectTuple(t, r.out, addrPort(podA.IP, tc.send.Sport), addrPort(tc.backend.Addr, backendPort))
			if ttl, wantTTL := r.out[offIPTTL], want[offIPTTL]; ttl != wantTTL {
				t.Errorf("TTL %d, want %d", ttl, wantTTL)
			}
			expectChecksums(t, r.out)
			expectBytes(t, "packet", r.out, want)
			d.expectCounts(t, one("from_pod/"+tc.reason, in))

			fwd := ctKeyOf(tc.send)
			d.expectCt(t, "forward entry", fwd, r, tc.lifetime, maps.CtEntry{
				Packets: 1, Bytes: uint64(len(in)),
				SvcId: tcpSvcID, BackendId: tc.backend.ID,
				TcpFlags: tc.send.TCPFlags,
			})
			rev := ctKey(protoTCP, tc.backend.Addr, backendPort, podA.IP, tc.send.Sport)
			// Nothing of the reply direction has been seen yet: a SYN's
			// handshake lifetime, whatever the forward packet was.
			d.expectCt(t, "reply entry", rev, r, lifetimeTCPSyn, maps.CtEntry{
				SvcId: tcpSvcID, BackendId: tc.backend.ID,
				NatAddr: maps.Addr16(vip), NatPort: maps.Port(vipPort),
				Flags: maps.CtFlagReply,
			})
			if n := len(d.ctAll(t)); n != 2 {
				t.Errorf("%d conntrack entries, want 2", n)
			}
		})
	}
}

// Once conntrack knows a flow, its packets go to the flow's backend whatever
// the service's slots say now. The forward entry counts the packets and
// collects the TCP flags: an ACK moves it to the established lifetime, a
// FIN down to the closing one. New connections see the slots as they are.
func TestServiceClusterIPEstablishedFlow(t *testing.T) {
	d := newServiceDatapath(t, clusterIP(protoTCP, backendB))
	syn := tcpFlow(podA.IP, 40001, vip, vipPort, tcpSYN)
	ack := syn.with("GET / HTTP/1.1\r\n\r\n")
	ack.TCPFlags, ack.ID = tcpACK|tcpPSH, syn.ID+1
	fin := ack.with("")
	fin.TCPFlags, fin.ID = tcpFIN|tcpACK, ack.ID+1
	fwd := ctKeyOf(syn)
	entry := func(packets int, bytes int, flags uint8) maps.CtEntry {
		return maps.CtEntry{Packets: uint64(packets), Bytes: uint64(bytes),
			SvcId: tcpSvcID, BackendId: backendB, TcpFlags: flags}
	}

	r := d.send(t, podA, syn.sentBy(podA))
	expectForwarded(t, r, syn.to(podB.IP, backendPort).routedInto(podB))
	d.expectCt(t, "after SYN", fwd, r, lifetimeTCPSyn, entry(1, len(syn.sentBy(podA)), tcpSYN))

	// The service now sends everything new to C.
	d.setSlots(t, tcpSvcID, backendC)

	r = d.send(t, podA, ack.sentBy(podA))
	expectForwarded(t, r, ack.to(podB.IP, backendPort).routedInto(podB))
	sent := len(syn.sentBy(podA)) + len(ack.sentBy(podA))
	d.expectCt(t, "after ACK", fwd, r, lifetimeTCPEstablished, entry(2, sent, tcpSYN|tcpACK|tcpPSH))

	r = d.send(t, podA, fin.sentBy(podA))
	expectForwarded(t, r, fin.to(podB.IP, backendPort).routedInto(podB))
	sent += len(fin.sentBy(podA))
	d.expectCt(t, "after FIN", fwd, r, lifetimeTCPClose, entry(3, sent, tcpSYN|tcpACK|tcpPSH|tcpFIN))

	other := tcpFlow(podA.IP, 40002, vip, vipPort, tcpSYN)
	r = d.send(t, podA, other.sentBy(podA))
	expectForwarded(t, r, other.to(podC.IP, backendPort).routedInto(podC))

	sent += len(other.sentBy(podA))
	d.expectCounts(t, counts{"from_pod/forward_local": {4, uint64(sent)}})
}

// A backend's answer to a translated flow leaves with the frontend as its
// source, so the client sees the address it connected to; it is routed
// into the client like any pod-to-pod packet. Its conntrack entry counts
// the reply direction and takes its lifetime from the reply's flags. A
// packet from the backend that matches no translated flow is left alone.
func TestServiceClusterIPReply(t *testing.T) {
	syn := tcpFlow(podA.IP, 40003, vip, vipPort, tcpSYN)
	// The flow as B sees it, for the client port of syn.
	atB := func(syn flow) flow { return syn.to(podB.IP, backendPort) }
	synAck := func(syn flow) flow { return atB(syn).answer(tcpSYN | tcpACK) }
	edge := withSportWhere(syn, func(f flow) bool { return computedZero(synAck(f).from(vip, vipPort)) })
	tests := []struct {
		name       string
		syn        flow            // A's SYN, translated to B first
		reply      func(flow) flow // what B sends, given A's SYN
		translated bool            // leaves with VIP:80 as its source
		lifetime   time.Duration   // of the reply entry afterwards
	}{
		{name: "SYN-ACK from B:8080 comes from VIP:80", syn: syn, reply: synAck,
			translated: true, lifetime: lifetimeTCPEstablished},
		{name: "data from B:8080 comes from VIP:80", syn: syn,
			reply:      func(s flow) flow { return atB(s).answer(tcpACK | tcpPSH).with("HTTP/1.1 200 OK\r\n") },
			translated: true, lifetime: lifetimeTCPEstablished},
		{name: "RST from B:8080 comes from VIP:80 and shortens the entry", syn: syn,
			reply:      func(s flow) flow { return atB(s).answer(tcpRST) },
			translated: true, lifetime: lifetimeTCPClose},
		{name: "translated reply checksum 0x0000", syn: edge, reply: synAck,
			translated: true, lifetime: lifetimeTCPEstablished},
		{name: "B:8080 to a port of A with no flow is not translated", syn: syn,
			reply: func(s flow) flow { return synAck(s).to(podA.IP, 40999) }},
		{name: "B from another port is not translated", syn: syn,
			reply: func(s flow) flow { return synAck(s).from(podB.IP, 8081) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newServiceDatapath(t, clusterIP(protoTCP, backendB))
			first := tc.syn.sentBy(podA)
			if r := d.send(t, podA, first); r.verdict != tcActRedirect {
				t.Fatalf("SYN: verdict %d, want TC_ACT_REDIRECT", r.verdict)
			}
			reply := tc.reply(tc.syn)
			want := reply
			if tc.translated {
				want = reply.from(vip, vipPort)
			}
			in := reply.sentBy(podB)

			r := d.send(t, podB, in)

			expectTuple(t, r.out, addrPort(want.Src, want.Sport), addrPort(want.Dst, want.Dport))
			if !bytes.Equal(r.out[0:6], podA.MAC) || !bytes.Equal(r.out[6:12], podA.NodeMAC) {
				t.Errorf("MACs %s, want A's MAC from A's gateway MAC", macs(r.out))
			}
			expectForwarded(t, r, want.routedInto(podA))
			d.expectCounts(t, counts{"from_pod/forward_local": {2, uint64(len(first) + len(in))}})
			rev := ctKey(protoTCP, podB.IP, backendPort, podA.IP, tc.syn.Sport)
			if !tc.translated {
				if e, _ := d.ctEntry(t, rev); e.Packets != 0 {
					t.Errorf("reply entry counted %d packets, want 0", e.Packets)
				}
				return
			}
			d.expectCtTouched(t, "reply entry", rev, r, tc.lifetime, maps.CtEntry{
				Packets: 1, Bytes: uint64(len(in)),
				SvcId: tcpSvcID, BackendId: backendB,
				NatAddr: maps.Addr16(vip), NatPort: maps.Port(vipPort),
				Flags: maps.CtFlagReply, TcpFlags: reply.TCPFlags,
			})
		})
	}
}

// from_pod only uses frontends of the internal scope, and only for the
// address, port and protocol they name: anything else to the VIP is no
// service traffic and goes to the stack unchanged.
func TestServiceFrontendMustMatch(t *testing.T) {
	external := clusterIP(protoTCP, backendB)
	external.ID = 3
	external.Frontend.Addr = netip4("10.96.0.11")
	external.Scope = maps.ScopeExternal
	tests := []struct {
		name string
		send flow
	}{
		{name: "another port of the VIP", send: tcpFlow(podA.IP, 40000, vip, 81, tcpSYN)},
		{name: "UDP to a TCP-only frontend", send: udpFlow(podA.IP, 40000, vip, vipPort)},
		{name: "a frontend of the external scope only",
			send: tcpFlow(podA.IP, 40000, external.Frontend.Addr, vipPort, tcpSYN)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newServiceDatapath(t, clusterIP(protoTCP, backendB), external)
			in := tc.send.sentBy(podA)
			r := d.send(t, podA, in)
			if r.verdict != tcActOK {
				t.Errorf("verdict %d, want TC_ACT_OK (%d)", r.verdict, tcActOK)
			}
			expectBytes(t, "packet", r.out, in)
			d.expectCounts(t, one("from_pod/to_stack", in))
			if n := len(d.ctAll(t)); n != 0 {
				t.Errorf("%d conntrack entries, want none", n)
			}
		})
	}
}

// A client may open a new connection on the tuple of one that just closed
// (the server closed first, so the client's port is free at once): a SYN
// on an entry that has seen FIN or RST starts the connection afresh. The
// flow keeps its backend, and its entries go back to the handshake and
// then the established lifetime instead of expiring 10 s after the last
// packet, which would hand an idle connection to another backend and leave
// the backend's replies untranslated.
func TestServiceClusterIPTupleReusedAfterClose(t *testing.T) {
	d := newServiceDatapath(t, clusterIP(protoTCP, backendB))
	client := tcpFlow(podA.IP, 40010, vip, vipPort, 0)
	atB := client.to(podB.IP, backendPort)
	fwd := ctKeyOf(client)
	rev := ctKey(protoTCP, podB.IP, backendPort, podA.IP, client.Sport)
	fromA := func(flags uint8) flow { f := client; f.TCPFlags = flags; return f }
	fromB := func(flags uint8) flow { return atB.answer(flags) }
	steps := []struct {
		what     string
		by       pod
		send     flow
		lifetime time.Duration // of the sender's direction's entry afterwards
	}{
		{"A: SYN", podA, fromA(tcpSYN), lifetimeTCPSyn},
		{"B: SYN-ACK", podB, fromB(tcpSYN | tcpACK), lifetimeTCPEstablished},
		{"A: ACK", podA, fromA(tcpACK), lifetimeTCPEstablished},
		{"B: FIN", podB, fromB(tcpFIN | tcpACK), lifetimeTCPClose},
		{"A: FIN", podA, fromA(tcpFIN | tcpACK), lifetimeTCPClose},
		{"B: last ACK", podB, fromB(tcpACK), lifetimeTCPClose},
		{"A: SYN on the same tuple", podA, fromA(tcpSYN), lifetimeTCPSyn},
		{"B: SYN-ACK of the new connection", podB, fromB(tcpSYN | tcpACK), lifetimeTCPEstablished},
		{"A: ACK of the new connection", podA, fromA(tcpACK), lifetimeTCPEstablished},
	}
	for _, s := range steps {
		r := d.send(t, s.by, s.send.sentBy(s.by))
		entry := fwd
		want := s.send.to(podB.IP, backendPort).routedInto(podB)
		if s.by.IP == podB.IP {
			entry = rev
			want = s.send.from(vip, vipPort).routedInto(podA)
		}
		expectForwarded(t, r, want)
		e, _ := d.ctEntry(t, entry)
		if got := time.Duration(int64(e.Expires) - int64(r.before)); got < s.lifetime-ctRefresh || got > s.lifetime+time.Duration(r.after-r.before) {
			t.Errorf("%s: its entry expires %s after it, want %s", s.what, got, s.lifetime)
		}
		if e, _ := d.ctEntry(t, fwd); e.BackendId != backendB {
			t.Errorf("%s: flow's backend %d, want B (%d)", s.what, e.BackendId, backendB)
		}
	}
}
