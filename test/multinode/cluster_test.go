package multinode_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/services"
)

// cluster is nodes on one underlay, each a peer of every other, with pods.
type cluster struct {
	mode     string
	underlay *sim.Underlay
	nodes    []*sim.Node
	pods     [][]*sim.Pod        // by node
	svcs     []*services.Manager // by node: programs its services
	host     *sim.Outside        // on the underlay, no node (outside)
}

var routingModes = []string{loader.RoutingDirect, loader.RoutingVXLAN}

// ioTimeout bounds every exchange a test expects to succeed.
const ioTimeout = 5 * time.Second

var (
	cniOnce sync.Once
	cniDir  string
	cniErr  error

	clusterMu  sync.Mutex
	clusterSeq int
)

// cniBin builds the CNI plugin once for every node of the test binary.
func cniBin() (string, error) {
	cniOnce.Do(func() {
		if cniDir, cniErr = os.MkdirTemp("", "podpath-multinode-bin-"); cniErr == nil {
			cniDir, cniErr = sim.BuildCNI(cniDir)
		}
	})
	return cniDir, cniErr
}

// buildCluster builds n nodes (pod CIDRs 10.230.<i>.0/24, underlay
// 192.168.230.0/24 with MTU mtu, 0 for 1500) routing as mode says, with
// podsPerNode pods each, every node a peer of every other. Names are
// unique to the cluster, so clusters can exist side by side. On failure
// what was built is removed again.
func buildCluster(mode string, n, podsPerNode, mtu int) (_ *cluster, err error) {
	bin, err := cniBin()
	if err != nil {
		return nil, err
	}
	clusterMu.Lock()
	clusterSeq++
	name := fmt.Sprintf("%s%d", mode, clusterSeq)
	clusterMu.Unlock()
	u, err := sim.NewUnderlay(name, netip.MustParsePrefix("192.168.230.0/24"), mtu)
	if err != nil {
		return nil, err
	}
	c := &cluster{mode: mode, underlay: u}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	opts := []sim.Option{sim.WithCNIBin(bin), sim.WithLoaderConfig(func(c *loader.Config) {
		c.Routing = mode
		// veth runs native XDP only on frames of one page: above an
		// MTU of about 3500 it refuses xdp_netdev (ERANGE), which has
		// no multi-buffer support.
		if mtu > 3000 {
			c.XDPMode = loader.XDPOff
		}
	})}
	if !testing.Verbose() {
		opts = append(opts, sim.WithPluginStderr(io.Discard))
	}
	for i := range n {
		node, err := sim.NewNode(fmt.Sprintf("%s-n%d", name, i+1), netip.MustParsePrefix(fmt.Sprintf("10.230.%d.0/24", i+1)),
			append(opts, sim.WithUnderlay(u, u.Addr(i+1)))...)
		if err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, node)
		m, err := services.Open(node.PinRoot, node.StateDir)
		if err != nil {
			return nil, err
		}
		c.svcs = append(c.svcs, m)
		var pods []*sim.Pod
		for j := range podsPerNode {
			p, err := node.AddPod(context.Background(), fmt.Sprintf("p%d", j))
			if err != nil {
				return nil, err
			}
			pods = append(pods, p)
		}
		c.pods = append(c.pods, pods)
	}
	if err := sim.JoinAll(c.nodes...); err != nil {
		return nil, err
	}
	return c, nil
}

// close removes the nodes (their pods with them) and the underlay.
func (c *cluster) close() error {
	var errs []error
	for _, m := range c.svcs {
		errs = append(errs, m.Close())
	}
	for _, n := range c.nodes {
		errs = append(errs, n.Close())
	}
	errs = append(errs, c.underlay.Close())
	return errors.Join(errs...)
}

// newCluster is a cluster of the test's own on an underlay of MTU mtu (see
// buildCluster), removed when the test ends.
func newCluster(t *testing.T, mode string, nodes, podsPerNode, mtu int) *cluster {
	t.Helper()
	c, err := buildCluster(mode, nodes, podsPerNode, mtu)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.close(); err != nil {
			t.Errorf("remove the cluster: %v", err)
		}
	})
	c.logCountersOnFailure(t)
	return c
}

var (
	sharedMu       sync.Mutex
	sharedClusters = map[string]*cluster{}
	sharedErrs     = map[string]error{}
)

// sharedCluster is the three-node cluster, one pod on each node, that the
// tests of one routing mode share: building one takes seconds per node (on
// an emulated CPU, far more), and most tests only add pods, servers and
// services of their own, which they remove again. A test that changes the
// cluster itself (its peers) restores it in a cleanup. TestMain removes
// the shared clusters at the end.
func sharedCluster(t *testing.T, mode string) *cluster {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	c, err := sharedClusters[mode], sharedErrs[mode]
	if c == nil && err == nil {
		c, err = buildCluster(mode, 3, 1, 0)
		sharedClusters[mode], sharedErrs[mode] = c, err
	}
	if err != nil {
		t.Fatalf("the shared %s cluster: %v", mode, err)
	}
	c.logCountersOnFailure(t)
	return c
}

// closeSharedClusters removes the shared clusters.
func closeSharedClusters() error {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	var errs []error
	for mode, c := range sharedClusters {
		if c != nil {
			errs = append(errs, c.close())
		}
		delete(sharedClusters, mode)
	}
	return errors.Join(errs...)
}

// addPod adds a pod to node i for the rest of the test.
func (c *cluster) addPod(t *testing.T, i int, name string, opts ...sim.PodOption) *sim.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := c.nodes[i]
	p, err := n.AddPod(ctx, name, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.DelPod(context.Background(), p); err != nil {
			t.Errorf("node %s: %v", n.Name, err)
		}
	})
	return p
}

// identify is a ServeTCP reply: the server's name and the client address
// it saw, as "name address".
func identify(name string) func(net.Conn) string {
	return func(c net.Conn) string {
		return name + " " + c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().String()
	}
}

// serveTCP runs a ServeTCP server with reply identify(name) on addr in
// the namespace do runs in, for the rest of the test.
func serveTCP(t *testing.T, do func(func() error) error, name, addr string) {
	t.Helper()
	ln, err := sim.ServeTCP(do, addr, identify(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

// serveUDP runs a ServeUDPEcho server on addr in the namespace do runs
// in, for the rest of the test, and returns what it receives.
func serveUDP(t *testing.T, do func(func() error) error, addr string) <-chan sim.Datagram {
	t.Helper()
	pc, got, err := sim.ServeUDPEcho(do, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return got
}

// Every pod reaches every pod on the other nodes over TCP, UDP and ICMP,
// in both routing modes, and the receiver sees the sender's own address:
// no NAT between pods. The packets take podpath's path, not the hosts'
// stacks: from_pod sends them on (routed out of the uplink, or
// encapsulated into the overlay) and, on the receiving node, from_netdev
// or from_overlay puts them straight into the pod.
func TestPodToPodAcrossNodes(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := sharedCluster(t, mode)
			var udp []<-chan sim.Datagram
			for i, p := range c.pods {
				serveTCP(t, p[0].Do, c.nodes[i].Name, netip.AddrPortFrom(p[0].IP, 7001).String())
				udp = append(udp, serveUDP(t, p[0].Do, netip.AddrPortFrom(p[0].IP, 7002).String()))
			}
			sent, delivered := "from_pod/forward_routed", "from_netdev/forward_local"
			if mode == loader.RoutingVXLAN {
				sent, delivered = "from_pod/forward_tunnel", "from_overlay/forward_local"
			}
			for i, from := range c.pods {
				for j, to := range c.pods {
					if i == j {
						continue
					}
					a, b := from[0], to[0]
					before := c.counts(t)
					got, err := sim.FetchTCP(a.Do, netip.AddrPortFrom(b.IP, 7001).String(), ioTimeout)
					if want := c.nodes[j].Name + " " + a.IP.String(); err != nil || got != want {
						t.Errorf("TCP node %d -> node %d: got %q (%v), want %q", i+1, j+1, got, err, want)
					}
					rt, err := sim.RoundTripUDP(a.Do, b.Do, udp[j], netip.AddrPortFrom(b.IP, 7002).String(), []byte("hello across nodes"))
					if err != nil {
						t.Errorf("UDP node %d -> node %d: %v", i+1, j+1, err)
					} else if rt.Seen.Addr() != a.IP {
						t.Errorf("UDP node %d -> node %d: the server saw %s, want the pod's own %s", i+1, j+1, rt.Seen, a.IP)
					}
					if err := sim.Ping(a.Do, b.IP, uint16(0x100*i+j), 56); err != nil {
						t.Errorf("ICMP node %d -> node %d: %v", i+1, j+1, err)
					}
					after := c.counts(t)
					// Both ways: requests from i, answers from j.
					for _, k := range []int{i, j} {
						now, then := after[k], before[k]
						if now[sent] <= then[sent] || now[delivered] <= then[delivered] {
							t.Errorf("node %d -> node %d: node %d counted %s", i+1, j+1, k+1, now.Since(then))
						}
						if now["from_pod/to_stack"] != then["from_pod/to_stack"] {
							t.Errorf("node %d -> node %d: node %d handed pods' packets to its stack: %s", i+1, j+1, k+1, now.Since(then))
						}
						if drops := dropsSince(now, then); drops != "" {
							t.Errorf("node %d drops: %s", k+1, drops)
						}
					}
				}
			}
		})
	}
}

// counts are every node's packet counters, by node.
func (c *cluster) counts(t *testing.T) []sim.PacketCounts {
	t.Helper()
	var out []sim.PacketCounts
	for _, n := range c.nodes {
		pc, err := n.PacketCounts()
		if err != nil {
			t.Fatalf("node %s: %v", n.Name, err)
		}
		out = append(out, pc)
	}
	return out
}

// dropsSince lists the drop counters that grew from then to now, as
// PacketCounts.Since does.
func dropsSince(now, then sim.PacketCounts) string {
	grown := sim.PacketCounts{}
	for k, v := range now {
		if v > then[k] {
			grown[k] = v - then[k]
		}
	}
	return grown.Drops()
}
