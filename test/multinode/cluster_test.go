package multinode_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
)

// cluster is nodes on one underlay, each a peer of every other, with pods.
type cluster struct {
	underlay *sim.Underlay
	nodes    []*sim.Node
	pods     [][]*sim.Pod // by node
}

var routingModes = []string{loader.RoutingDirect, loader.RoutingVXLAN}

// newCluster builds n nodes (pod CIDRs 10.230.<i>.0/24, underlay
// 192.168.230.0/24) routing as mode says, with podsPerNode pods each.
func newCluster(t *testing.T, mode string, n, podsPerNode int) *cluster {
	t.Helper()
	u, err := sim.NewUnderlay("mn", netip.MustParsePrefix("192.168.230.0/24"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	c := &cluster{underlay: u}
	for i := range n {
		node, err := sim.NewNode(fmt.Sprintf("n%d", i+1), netip.MustParsePrefix(fmt.Sprintf("10.230.%d.0/24", i+1)),
			sim.WithUnderlay(u, u.Addr(i+1)),
			sim.WithLoaderConfig(func(c *loader.Config) { c.Routing = mode }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { node.Close() })
		c.nodes = append(c.nodes, node)
		var pods []*sim.Pod
		for j := range podsPerNode {
			p, err := node.AddPod(context.Background(), fmt.Sprintf("p%d", j))
			if err != nil {
				t.Fatal(err)
			}
			pods = append(pods, p)
		}
		c.pods = append(c.pods, pods)
	}
	c.logCountersOnFailure(t)
	if err := sim.JoinAll(c.nodes...); err != nil {
		t.Fatal(err)
	}
	return c
}

// Every pod reaches every pod on the other nodes over TCP and UDP, in both
// routing modes, and the receiver sees the sender's own address.
func TestPodToPodAcrossNodes(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, mode, 3, 1)
			for i, from := range c.pods {
				for j, to := range c.pods {
					if i == j {
						continue
					}
					if _, err := sim.TCPEcho(from[0], to[0], []byte("hello across nodes")); err != nil {
						t.Errorf("%s: node %d -> node %d: %v", mode, i+1, j+1, err)
					}
					if _, err := sim.UDPEcho(from[0], to[0], []byte("hello across nodes")); err != nil {
						t.Errorf("%s: node %d -> node %d: %v", mode, i+1, j+1, err)
					}
				}
			}
		})
	}
}
