package multinode_test

import (
	"crypto/rand"
	"net"
	"net/netip"
	"testing"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/services"
)

// Datagrams larger than the MTU travel as IP fragments, and only the first
// carries the ports services and masquerading decide on; the others must
// get the same translation (bpf/lib/frag.h) on every hop that translates.
// An 8,000-byte UDP datagram, fragmented by its sender, crosses to another
// node and its 8,000-byte echo comes back, whole, in both modes: between
// two pods, from a pod through a ClusterIP whose backend is on the other
// node, and from a host on the underlay through node 1's NodePort to that
// backend (translated and masqueraded at node 1). The backend sees the
// client as it would for a small datagram: the pod itself, or node 1.
func TestFragmentsAcrossNodes(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := sharedCluster(t, mode)
			host := c.outside(t)
			client, b := c.pods[0][0], c.pods[1][0]
			got := serveUDP(t, b.Do, netip.AddrPortFrom(b.IP, 7500).String())
			c.applyService(t, services.Service{
				Namespace: "mn", Name: "frag", Type: services.TypeNodePort,
				ClusterIP: netip.MustParseAddr("10.96.30.50"),
				Ports:     []services.Port{{Protocol: services.ProtocolUDP, Port: 80, TargetPort: 7500, NodePort: 30150}},
			}, &backend{node: 1, pod: b})
			msg := make([]byte, 8000)
			rand.Read(msg)
			for _, tc := range []struct {
				name   string
				do     func(func() error) error
				addr   string
				seenAs netip.Addr
			}{
				{"pod to pod", client.Do, netip.AddrPortFrom(b.IP, 7500).String(), client.IP},
				{"pod through the ClusterIP", client.Do, "10.96.30.50:80", client.IP},
				{"host through node 1's NodePort", host.Do, net.JoinHostPort(c.nodes[0].Address.String(), "30150"), c.nodes[0].Address},
			} {
				before := c.counts(t)
				rt, err := sim.RoundTripUDP(tc.do, b.Do, got, tc.addr, msg)
				if err == nil {
					err = rt.Fragmented()
				}
				if err != nil {
					t.Errorf("%s: %v; node 1 counted %s; node 2 counted %s", tc.name, err,
						c.counts(t)[0].Since(before[0]), c.counts(t)[1].Since(before[1]))
					continue
				}
				if rt.Seen.Addr() != tc.seenAs {
					t.Errorf("%s: the backend saw the client as %s, want %s", tc.name, rt.Seen, tc.seenAs)
				}
				t.Logf("%s: %v", tc.name, rt)
			}
		})
	}
}
