package multinode_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
)

// Policy across nodes, in both routing modes: every node's ipcache knows
// every pod's identity (nothing rides on the packet), and the receiving
// node decides the pod's ingress where it delivers: from_netdev or
// from_overlay. A pod whose ingress allows one identity on one TCP port
// takes that connection from another node, and its answers leave though
// its egress is enforced with no rule; another identity, another port or
// another protocol gets nothing, each counted as drop_policy_ingress on
// the receiving node.
func TestPolicyAcrossNodes(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := sharedCluster(t, mode)
			a := c.addPod(t, 0, "pol-a")
			b := c.addPod(t, 1, "pol-b")
			x := c.addPod(t, 2, "pol-x")
			ids := map[netip.Addr]uint32{a.IP: maps.IdentityFirstUser + 10, b.IP: maps.IdentityFirstUser + 11, x.IP: maps.IdentityFirstUser + 12}
			for _, n := range c.nodes {
				pol, err := maps.OpenPolicy(n.PinRoot)
				if err != nil {
					t.Fatal(err)
				}
				for ip, id := range ids {
					if err := pol.SetIdentity(netip.PrefixFrom(ip, 32), id); err != nil {
						t.Fatal(err)
					}
				}
				t.Cleanup(func() {
					for ip := range ids {
						pol.DeleteIdentity(netip.PrefixFrom(ip, 32))
					}
					pol.Close()
				})
			}
			pol, err := maps.OpenPolicy(c.nodes[1].PinRoot)
			if err != nil {
				t.Fatal(err)
			}
			defer pol.Close()
			allowed := maps.PolicyRule{Endpoint: b.IP, Direction: maps.PolicyIngress, Identity: ids[a.IP], Proto: 6, PortFirst: 7200, PortLast: 7200}
			if err := pol.Allow(allowed); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pol.Revoke(allowed) })
			if err := pol.SetEnforcement(b.IP, maps.EndpointPolicyIngress|maps.EndpointPolicyEgress); err != nil {
				t.Fatal(err)
			}
			serveTCP(t, b.Do, "pol-b", netip.AddrPortFrom(b.IP, 7200).String())
			serveTCP(t, b.Do, "pol-b", netip.AddrPortFrom(b.IP, 7201).String())

			if got, err := sim.FetchTCP(a.Do, netip.AddrPortFrom(b.IP, 7200).String(), ioTimeout); err != nil || got != "pol-b "+a.IP.String() {
				t.Errorf("TCP a -> b:7200, allowed: %q, %v", got, err)
			}
			hook := "from_netdev"
			if mode != "direct" {
				hook = "from_overlay"
			}
			drops := func() uint64 { return c.counts(t)[1][hook+"/drop_policy_ingress"] }
			for _, tc := range []struct {
				name string
				try  func() error
			}{
				{"TCP x -> b:7200, another identity", func() error {
					_, err := sim.FetchTCP(x.Do, netip.AddrPortFrom(b.IP, 7200).String(), 500*time.Millisecond)
					return err
				}},
				{"TCP a -> b:7201, another port", func() error {
					_, err := sim.FetchTCP(a.Do, netip.AddrPortFrom(b.IP, 7201).String(), 500*time.Millisecond)
					return err
				}},
				{"UDP a -> b:7200, another protocol", func() error {
					_, err := sim.UDPEcho(a, b, []byte("udp"))
					return err
				}},
				{"ICMP a -> b", func() error { return sim.Ping(a.Do, b.IP, 21, 8) }},
			} {
				before := drops()
				if err := tc.try(); err == nil {
					t.Errorf("%s: got through", tc.name)
					continue
				}
				if drops() == before {
					t.Errorf("%s: node 2 counted no %s/drop_policy_ingress", tc.name, hook)
				}
			}
			if t.Failed() {
				t.Log(fmt.Sprint(c.counts(t)[1].Drops()))
			}
		})
	}
}
