package datapath_test

import (
	"encoding/binary"
	"testing"

	"github.com/podpath/podpath/maps"
)

// UDP to a ClusterIP is translated both ways like TCP. A datagram sent with
// a checksum leaves with exactly the checksum a fresh computation gives (a
// computed zero written as 0xffff, since zero means none); a datagram sent
// without one (zero) leaves without one, in both directions.
func TestServiceUDP(t *testing.T) {
	query := udpFlow(podA.IP, 50000, vip, vipPort)
	answerOf := func(q flow) flow { return q.to(podB.IP, backendPort).answer(0).with("an answer") }
	noChecksum := query
	noChecksum.NoChecksum = true
	tests := []struct {
		name  string
		query flow // sent by A; B answers with answerOf(query)
	}{
		{name: "with checksum", query: query},
		{name: "without checksum, both ways", query: noChecksum},
		{name: "translated query checksum computes to zero, sent as 0xffff",
			query: withSportWhere(query, func(f flow) bool { return computedZero(f.to(podB.IP, backendPort)) })},
		{name: "translated answer checksum computes to zero, sent as 0xffff",
			query: withSportWhere(query, func(f flow) bool { return computedZero(answerOf(f).from(vip, vipPort)) })},
		{name: "query sent with checksum 0xffff (a computed zero)",
			query: withSportWhere(query, computedZero)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newServiceDatapath(t, clusterIP(protoUDP, backendB))
			in := tc.query.sentBy(podA)

			r := d.send(t, podA, in)

			expectTuple(t, r.out, addrPort(podA.IP, tc.query.Sport), addrPort(podB.IP, backendPort))
			expectForwarded(t, r, tc.query.to(podB.IP, backendPort).routedInto(podB))
			expectUDPChecksumKind(t, "query", r.out, tc.query.NoChecksum)
			d.expectCt(t, "forward entry", ctKeyOf(tc.query), r, lifetimeNonTCP, maps.CtEntry{
				Packets: 1, Bytes: uint64(len(in)), SvcId: udpSvcID, BackendId: backendB,
			})
			rev := ctKey(protoUDP, podB.IP, backendPort, podA.IP, tc.query.Sport)
			d.expectCt(t, "reply entry", rev, r, lifetimeNonTCP, maps.CtEntry{
				SvcId: udpSvcID, BackendId: backendB,
				NatAddr: maps.Addr16(vip), NatPort: maps.Port(vipPort), Flags: maps.CtFlagReply,
			})

			answer := answerOf(tc.query)
			back := answer.sentBy(podB)

			r = d.send(t, podB, back)

			expectTuple(t, r.out, addrPort(vip, vipPort), addrPort(podA.IP, tc.query.Sport))
			expectForwarded(t, r, answer.from(vip, vipPort).routedInto(podA))
			expectUDPChecksumKind(t, "answer", r.out, tc.query.NoChecksum)
			d.expectCtTouched(t, "reply entry after the answer", rev, r, lifetimeNonTCP, maps.CtEntry{
				Packets: 1, Bytes: uint64(len(back)), SvcId: udpSvcID, BackendId: backendB,
				NatAddr: maps.Addr16(vip), NatPort: maps.Port(vipPort), Flags: maps.CtFlagReply,
			})
			d.expectCounts(t, counts{"from_pod/forward_local": {2, uint64(len(in) + len(back))}})
		})
	}
}

// expectUDPChecksumKind checks that a datagram still has no checksum, or
// still has one.
func expectUDPChecksumKind(t *testing.T, what string, frame []byte, none bool) {
	t.Helper()
	sum := binary.BigEndian.Uint16(frame[ethHeaderLen+ipv4HeaderLen+6:])
	if none && sum != 0 {
		t.Errorf("%s: UDP checksum %#04x, want none (0): a datagram sent without a checksum keeps none", what, sum)
	}
	if !none && sum == 0 {
		t.Errorf("%s: UDP checksum 0 (none), want one", what)
	}
}
