package socklb_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"golang.org/x/sys/unix"
)

// A node process connecting to a ClusterIP whose backends are pods of
// another node is sent there by its connect(), in both routing modes: the
// kernel's route for that node's pod CIDR (direct: via the node; vxlan:
// into the overlay device, where to_overlay sets the tunnel key) carries
// the connection, and the backend sees this node's own address.
func TestTCPConnectToOtherNodesBackend(t *testing.T) {
	for i, mode := range []string{loader.RoutingDirect, loader.RoutingVXLAN} {
		t.Run(mode, func(t *testing.T) {
			f := newCgroupFixture(t)
			u, err := sim.NewUnderlay("socklb-"+mode, netip.MustParsePrefix(fmt.Sprintf("192.168.%d.0/24", 232+i)), 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { u.Close() })
			var nodes []*testNode
			for j := range 2 {
				n, err := sim.NewNode(fmt.Sprintf("sl%s%d", mode[:1], j+1), netip.MustParsePrefix(fmt.Sprintf("10.213.%d.0/24", 10*i+j+1)),
					sim.WithCNIBin(cniBin), sim.WithUnderlay(u, u.Addr(j+1)),
					sim.WithLoaderConfig(func(c *loader.Config) { c.Routing = mode }))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { n.Close() })
				nodes = append(nodes, &testNode{Node: n, addr: n.Address})
			}
			if err := sim.JoinAll(nodes[0].Node, nodes[1].Node); err != nil {
				t.Fatal(err)
			}
			remote := nodes[1]
			for k := 1; k <= 2; k++ {
				remote.backends = append(remote.backends, remote.addPod(t, fmt.Sprintf("web-%d", k), true))
			}
			local := nodes[0]
			putService(t, local.PinRoot, 1, vip, frontendPort, unix.IPPROTO_TCP, 0, remote.backendAddrs()...)
			cg := f.newCgroup(t, "remote-"+mode)
			attach(t, local, cg)

			// Each connection's backend is as good as random (its socket
			// cookie's hash or a random pick): with 40 connections one
			// backend goes unseen once in 2^39 runs, with 10 once in 512.
			const conns = 40
			front := netip.AddrPortFrom(vip, frontendPort)
			res := client(t, f, cg, local.NS.Path(), clientOp{Kind: opTCP, Addr: front.String(), Count: conns})
			seen := map[string]int{}
			for k, e := range res[0].Exchanges {
				if e.Errno != "" {
					t.Fatalf("connection %d to %s: %s failed with %s", k, front, e.Step, e.Errno)
				}
				pod, client := e.served()
				if client.Addr() != local.addr {
					t.Errorf("connection %d: %s saw client %s, want node 1's address %s", k, pod, client, local.addr)
				}
				seen[pod]++
			}
			if len(seen) != len(remote.backends) {
				t.Errorf("%d connections reached %v, want both backends on node 2", conns, seen)
			}
			t.Logf("%s: %d connections from node 1's processes to node 2's backends: %v", mode, conns, seen)
		})
	}
}
