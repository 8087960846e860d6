package datapath_test

import (
	"testing"

	"github.com/podpath/podpath/maps"
)

// A pod that reaches a service whose backend is the pod itself gets its own
// packet back with the backend as destination AND the frontend as source:
// from its own address the answer would never leave the pod's namespace, and
// the pod would not recognise it. Both conntrack entries carry the hairpin
// flag; the pod's answer, sent to the frontend, leaves as the frontend's
// answer to the pod.
func TestServiceHairpin(t *testing.T) {
	tests := []struct {
		name   string
		client flow            // A to the VIP
		answer func(flow) flow // A's answer to what it received
	}{
		{name: "TCP", client: tcpFlow(podA.IP, 40100, vip, vipPort, tcpSYN),
			answer: func(got flow) flow { return got.answer(tcpSYN | tcpACK) }},
		{name: "UDP", client: udpFlow(podA.IP, 40100, vip, vipPort),
			answer: func(got flow) flow { return got.answer(0).with("an answer") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := clusterIP(tc.client.Proto, backendA)
			d := newServiceDatapath(t, svc)
			in := tc.client.sentBy(podA)

			r := d.send(t, podA, in)

			// VIP:sport -> A:8080, into A.
			got := tc.client.to(podA.IP, backendPort).from(vip, tc.client.Sport)
			expectTuple(t, r.out, addrPort(vip, tc.client.Sport), addrPort(podA.IP, backendPort))
			expectForwarded(t, r, got.routedInto(podA))
			d.expectCt(t, "forward entry", ctKeyOf(tc.client), r, lifetimeOf(tc.client), maps.CtEntry{
				Packets: 1, Bytes: uint64(len(in)), SvcId: svc.ID, BackendId: backendA,
				Flags: maps.CtFlagHairpin, TcpFlags: tc.client.TCPFlags,
			})
			// The answer comes from A:8080 to the VIP, at the client's port.
			rev := ctKey(tc.client.Proto, podA.IP, backendPort, vip, tc.client.Sport)
			revEntry := maps.CtEntry{
				SvcId: svc.ID, BackendId: backendA,
				NatAddr: maps.Addr16(vip), NatPort: maps.Port(vipPort),
				Flags: maps.CtFlagReply | maps.CtFlagHairpin,
			}
			// Nothing of the answer direction seen yet: flags 0.
			d.expectCt(t, "reply entry", rev, r, lifetimeOf(tc.client.answer(0)), revEntry)
			if n := len(d.ctAll(t)); n != 2 {
				t.Errorf("%d conntrack entries, want 2", n)
			}

			answer := tc.answer(got)
			back := answer.sentBy(podA)

			r = d.send(t, podA, back)

			// A:8080 -> VIP:sport leaves as VIP:80 -> A:sport.
			want := answer.from(vip, vipPort).to(podA.IP, tc.client.Sport)
			expectTuple(t, r.out, addrPort(vip, vipPort), addrPort(podA.IP, tc.client.Sport))
			expectForwarded(t, r, want.routedInto(podA))
			revEntry.Packets, revEntry.Bytes, revEntry.TcpFlags = 1, uint64(len(back)), answer.TCPFlags
			d.expectCtTouched(t, "reply entry after the answer", rev, r, lifetimeOf(answer), revEntry)
			d.expectCounts(t, counts{"from_pod/forward_local": {2, uint64(len(in) + len(back))}})
		})
	}
}
