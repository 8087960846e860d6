package datapath_test

import (
	"net/netip"
	"testing"

	"github.com/podpath/podpath/maps"
)

// A NodePort frontend has no address of its own (all zero in its key): it
// stands for every address of the node. A pod reaches it through any
// address listed in node_addrs, and through nothing else. The flow's
// conntrack entries remember the address the pod used, so B's answer comes
// back from exactly that address and port.
func TestServiceNodePort(t *testing.T) {
	const nodePort = 30080
	nodePortSvc := service{
		ID:       5,
		Frontend: frontend{Addr: netip.IPv4Unspecified(), Port: nodePort, Proto: protoTCP},
		Scope:    maps.ScopeInternal,
		Algo:     maps.AlgoRandom,
		Flags:    maps.SvcFlagNodePort,
		Slots:    []uint32{backendB},
	}
	tests := []struct {
		name       string
		send       flow
		translated bool
	}{
		{name: "a listed node address", send: tcpFlow(podA.IP, 40500, nodeIP, nodePort, tcpSYN), translated: true},
		{name: "UDP to the TCP NodePort", send: udpFlow(podA.IP, 40500, nodeIP, nodePort)},
		{name: "another port of a listed node address", send: tcpFlow(podA.IP, 40500, nodeIP, nodePort+1, tcpSYN)},
		{name: "an address not listed", send: tcpFlow(podA.IP, 40500, strangerIP, nodePort, tcpSYN)},
		{name: "the ClusterIP is no node address", send: tcpFlow(podA.IP, 40500, vip, nodePort, tcpSYN)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newServiceDatapath(t, nodePortSvc)
			d.putNodeAddr(t, nodeIP, 2)
			in := tc.send.sentBy(podA)

			r := d.send(t, podA, in)

			if !tc.translated {
				if r.verdict != tcActOK {
					t.Errorf("verdict %d, want TC_ACT_OK (%d)", r.verdict, tcActOK)
				}
				expectBytes(t, "packet", r.out, in)
				d.expectCounts(t, one("from_pod/to_stack", in))
				if n := len(d.ctAll(t)); n != 0 {
					t.Errorf("%d conntrack entries, want none", n)
				}
				return
			}
			expectTuple(t, r.out, addrPort(podA.IP, tc.send.Sport), addrPort(podB.IP, backendPort))
			expectForwarded(t, r, tc.send.to(podB.IP, backendPort).routedInto(podB))
			d.expectCt(t, "forward entry", ctKeyOf(tc.send), r, lifetimeTCPSyn, maps.CtEntry{
				Packets: 1, Bytes: uint64(len(in)), SvcId: nodePortSvc.ID, BackendId: backendB, TcpFlags: tcpSYN,
			})
			rev := ctKey(protoTCP, podB.IP, backendPort, podA.IP, tc.send.Sport)
			d.expectCt(t, "reply entry", rev, r, lifetimeTCPSyn, maps.CtEntry{
				SvcId: nodePortSvc.ID, BackendId: backendB,
				NatAddr: maps.Addr16(nodeIP), NatPort: maps.Port(nodePort), Flags: maps.CtFlagReply,
			})

			answer := tc.send.to(podB.IP, backendPort).answer(tcpSYN | tcpACK)
			back := answer.sentBy(podB)
			r = d.send(t, podB, back)
			expectTuple(t, r.out, addrPort(nodeIP, nodePort), addrPort(podA.IP, tc.send.Sport))
			expectForwarded(t, r, answer.from(nodeIP, nodePort).routedInto(podA))
			d.expectCounts(t, counts{"from_pod/forward_local": {2, uint64(len(in) + len(back))}})
		})
	}
}
