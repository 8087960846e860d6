package multinode_test

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/services"
)

// A UDP client of a service whose backend, on another node, has nothing
// listening on the target port is told so at once: the backend's stack
// answers with ICMP port unreachable about the datagram as it arrived,
// and the datapath must give the error the frontend back, in its quote and
// as its source, for the client's kernel to match it to its socket,
// connected to the frontend: the read fails with ECONNREFUSED. So for a
// pod through a ClusterIP (the error crosses back to the client's node,
// which translated the datagram) and for a host on the underlay through
// node 1's NodePort (the datagram left node 1 masqueraded, so the error
// comes back to node 1's address and both translations are undone there).
func TestPortUnreachableAcrossNodes(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := sharedCluster(t, mode)
			host := c.outside(t)
			closed := c.pods[1][0] // nothing listens on 7600 there
			c.applyService(t, services.Service{
				Namespace: "mn", Name: "closed", Type: services.TypeNodePort,
				ClusterIP: netip.MustParseAddr("10.96.30.60"),
				Ports:     []services.Port{{Protocol: services.ProtocolUDP, Port: 80, TargetPort: 7600, NodePort: 30160}},
			}, &backend{node: 1, pod: closed})
			for _, tc := range []struct {
				name string
				do   func(func() error) error
				addr string
			}{
				{"pod through the ClusterIP", c.pods[0][0].Do, "10.96.30.60:80"},
				{"host through node 1's NodePort", host.Do, net.JoinHostPort(c.nodes[0].Address.String(), "30160")},
			} {
				sent0 := snmp(t, closed.Do)
				before := c.counts(t)
				_, err := sim.ExchangeUDP(tc.do, tc.addr, []byte("anyone?"), 3*time.Second)
				sent := snmp(t, closed.Do)["Icmp.OutDestUnreachs"] - sent0["Icmp.OutDestUnreachs"]
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("%s: %v, want connection refused; the backend sent %d destination unreachable; node 1 counted %s; node 2 counted %s",
						tc.name, err, sent, c.counts(t)[0].Since(before[0]), c.counts(t)[1].Since(before[1]))
				}
				if sent < 1 {
					t.Errorf("%s: the backend sent no port unreachable: this test shows nothing", tc.name)
				}
			}
		})
	}
}
