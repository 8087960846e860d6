package agent_test

import (
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
)

// NetworkPolicy truth tables across two nodes, each with its agent, in
// both routing modes: pods a and c of every namespace on the first node,
// pods b on the second, so every case has traffic within a node and
// between nodes, decided on the receiving node by the sending pod's
// identity as its agent learnt it from the API, and on the sending node
// by the destination's.
func TestNetworkPolicyTruthTableTwoNodes(t *testing.T) {
	for _, mode := range []string{loader.RoutingVXLAN, loader.RoutingDirect} {
		t.Run(mode, func(t *testing.T) { testTruthTableTwoNodes(t, mode) })
	}
}

func testTruthTableTwoNodes(t *testing.T, mode string) {
	tn := newTwoNodes(t, "tt", 232, mode)
	nodes, u, cluster := tn.nodes, tn.underlay, tn.cluster
	deadline := time.Now().Add(60 * time.Second)
	for !peerPrefixes(t, nodes[0])[nodes[1].PodCIDR] || !peerPrefixes(t, nodes[1])[nodes[0].PodCIDR] {
		if time.Now().After(deadline) {
			t.Fatal("the nodes are not each other's peers after 60 s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	c := &ttCluster{client: cluster.Client, nodes: nodes}
	for i, name := range []string{"host-in", "host-ex"} {
		h, err := u.AddHost(name, u.Addr(100+i))
		if err != nil {
			t.Fatal(err)
		}
		c.outside = append(c.outside, &ttTarget{pod: name, ip: h.IP, do: h.Do})
	}
	c.setup(t, func(ns, pod string) (*sim.Node, string) {
		n := nodes[0]
		if pod == "b" {
			n = nodes[1]
		}
		return n, n.Name
	})
	c.run(t, c.cases())
}
