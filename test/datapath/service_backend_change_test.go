package datapath_test

import (
	"testing"

	"github.com/podpath/podpath/maps"
)

// A flow conntrack knows keeps its backend while the backend exists, even
// when it is terminating (it finishes its connections, it only takes no
// new ones). A flow whose backend is gone, or whose entry has expired, is
// a new flow: it gets a backend from the slots as they are now, conntrack
// records the new choice, and the new backend's answers are translated.
func TestServiceKnownFlowBackendChanges(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, d *svcDatapath, fwd maps.CtKey)
		want   backend
	}{
		{name: "backend terminating: the flow keeps it", want: beB,
			change: func(t *testing.T, d *svcDatapath, _ maps.CtKey) {
				b := beB
				b.Flags = maps.BackendFlagTerminating
				d.putBackend(t, b)
			}},
		{name: "backend deleted: the flow gets a new one", want: beC,
			change: func(t *testing.T, d *svcDatapath, _ maps.CtKey) { d.deleteBackend(t, backendB) }},
		{name: "conntrack entry expired: the flow gets a new one", want: beC,
			change: func(t *testing.T, d *svcDatapath, fwd maps.CtKey) {
				e, _ := d.ctEntry(t, fwd)
				e.Expires = monotonic(t) - 1
				d.putCtEntry(t, fwd, e)
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := clusterIP(protoTCP, backendB)
			d := newServiceDatapath(t, svc)
			syn := tcpFlow(podA.IP, 40300, vip, vipPort, tcpSYN)
			fwd := ctKeyOf(syn)
			first := d.send(t, podA, syn.sentBy(podA))
			expectForwarded(t, first, syn.to(podB.IP, backendPort).routedInto(podB))

			// User space moves the service to C, then the change.
			svc.Slots = []uint32{backendC}
			d.putService(t, svc)
			tc.change(t, d, fwd)

			ack := syn.with("GET /")
			ack.TCPFlags, ack.ID = tcpACK|tcpPSH, syn.ID+1
			in := ack.sentBy(podA)

			r := d.send(t, podA, in)

			expectTuple(t, r.out, addrPort(podA.IP, ack.Sport), addrPort(tc.want.Addr, backendPort))
			p, _ := podAt(tc.want.Addr)
			expectForwarded(t, r, ack.to(tc.want.Addr, backendPort).routedInto(p))
			e, _ := d.ctEntry(t, fwd)
			if e.BackendId != tc.want.ID || e.SvcId != tcpSvcID {
				t.Errorf("forward entry: backend %d service %d, want backend %d service %d", e.BackendId, e.SvcId, tc.want.ID, tcpSvcID)
			}
			if tc.want == beB {
				d.expectCt(t, "forward entry", fwd, r, lifetimeTCPEstablished, maps.CtEntry{
					Packets: 2, Bytes: uint64(len(syn.sentBy(podA)) + len(in)),
					SvcId: tcpSvcID, BackendId: backendB, TcpFlags: tcpSYN | ack.TCPFlags,
				})
				return
			}
			// A new flow from here: entries made afresh by this packet.
			d.expectCt(t, "forward entry", fwd, r, lifetimeTCPEstablished, maps.CtEntry{
				Packets: 1, Bytes: uint64(len(in)),
				SvcId: tcpSvcID, BackendId: tc.want.ID, TcpFlags: ack.TCPFlags,
			})
			rev := ctKey(protoTCP, tc.want.Addr, backendPort, podA.IP, ack.Sport)
			d.expectCt(t, "new reply entry", rev, r, lifetimeTCPSyn, maps.CtEntry{
				SvcId: tcpSvcID, BackendId: tc.want.ID,
				NatAddr: maps.Addr16(vip), NatPort: maps.Port(vipPort), Flags: maps.CtFlagReply,
			})

			answer := ack.to(tc.want.Addr, backendPort).answer(tcpACK).with("200 OK")
			r = d.send(t, p, answer.sentBy(p))
			expectForwarded(t, r, answer.from(vip, vipPort).routedInto(podA))
		})
	}
}
