package multinode_test

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/services"
	"github.com/vishvananda/netlink"
)

// outside is a host on the cluster's underlay that is no node: a client
// of NodePorts. One per cluster, made on first use.
func (c *cluster) outside(t *testing.T) *sim.Outside {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if c.host == nil {
		h, err := c.underlay.AddHost(c.mode+"-client", c.underlay.Addr(200))
		if err != nil {
			t.Fatal(err)
		}
		c.host = h
	}
	return c.host
}

// frontend is an address a client outside reaches a service at, and the
// node that takes it in.
type frontend struct {
	node int
	addr string
}

// nodePortSetup is, on the mode's shared cluster, a backend named name on
// the second node behind a service with a NodePort, port, on every node
// and an external IP, ext (port 80), that the cluster's outside host routes
// through the first node, TCP and UDP, with the given externalTrafficPolicy.
// It returns the cluster, the host, the backend and the frontends.
func nodePortSetup(t *testing.T, mode, name, clusterIP, ext string, port int32, policy services.TrafficPolicy) (*cluster, *sim.Outside, *backend, []frontend) {
	t.Helper()
	c := sharedCluster(t, mode)
	host := c.outside(t)
	b := c.addBackend(t, 1, name)
	extIP := netip.MustParseAddr(ext)
	c.applyService(t, services.Service{
		Namespace: "mn", Name: name, Type: services.TypeNodePort,
		ClusterIP:   netip.MustParseAddr(clusterIP),
		ExternalIPs: []netip.Addr{extIP},
		Ports: []services.Port{
			{Name: "tcp", Port: 80, TargetPort: backendPort, NodePort: port},
			{Name: "udp", Protocol: services.ProtocolUDP, Port: 80, TargetPort: backendPort, NodePort: port},
		},
		ExternalTrafficPolicy: policy,
	}, b)
	route := &netlink.Route{Dst: &net.IPNet{IP: extIP.AsSlice(), Mask: net.CIDRMask(32, 32)}, Gw: c.nodes[0].Address.AsSlice()}
	if err := host.Do(func() error { return netlink.RouteAdd(route) }); err != nil {
		t.Fatalf("route %s via node 1: %v", extIP, err)
	}
	t.Cleanup(func() { host.Do(func() error { return netlink.RouteDel(route) }) })
	var fs []frontend
	for i, n := range c.nodes {
		fs = append(fs, frontend{i, net.JoinHostPort(n.Address.String(), strconv.Itoa(int(port)))})
	}
	fs = append(fs, frontend{0, net.JoinHostPort(ext, "80")})
	return c, host, b, fs
}

// A service with externalTrafficPolicy Cluster and its only backend on
// the second node, reached by a host on the underlay over TCP and UDP
// through every node's NodePort and through an external IP routed to the
// first node. Through another node the request is translated there and
// sent across to the backend with that node's address as source (SNAT, as
// kube-proxy does: the backend's answer must come back through the node
// that translated it); the answer comes back from the address and port
// the client used.
func TestNodePortClusterPolicyRemoteBackend(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c, host, b, fs := nodePortSetup(t, mode, "np-cluster", "10.96.30.20", "203.0.113.20", 30100, services.TrafficPolicyCluster)
			for _, f := range fs {
				n := c.nodes[f.node]
				name, seen, err := fetchIdentity(host.Do, f.addr)
				if err != nil || name != b.name {
					t.Errorf("TCP to %s (node %d): backend %q: %v", f.addr, f.node+1, name, err)
					continue
				}
				got, from, err := exchangeUDP(host.Do, f.addr, "to "+f.addr, []*backend{b})
				if err != nil || got != b {
					t.Errorf("UDP to %s (node %d): %v", f.addr, f.node+1, err)
					continue
				}
				if f.node == b.node {
					t.Logf("through the backend's own node the backend saw the client as %s over TCP, %s over UDP", seen, from)
					continue
				}
				if seen != n.Address.String() || from != n.Address {
					t.Errorf("through %s (node %d) the backend saw the client as %s over TCP and %s over UDP, want the node's address %s",
						f.addr, f.node+1, seen, from, n.Address)
				}
			}
		})
	}
}

// A service with externalTrafficPolicy Local and its only backend on the
// second node, with NodePorts and an external IP routed to the first
// node. Through the backend's node a host on the underlay reaches the
// backend, which sees the host's own address (no SNAT: that is what the
// policy is for). Through the other nodes, which have no local endpoint,
// nothing is forwarded: the request fails and the backend receives
// nothing. Pods still reach the service at the same addresses on their
// own node, as internal traffic is not narrowed by the external policy.
func TestNodePortLocalPolicy(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c, host, b, fs := nodePortSetup(t, mode, "np-local", "10.96.30.21", "203.0.113.21", 30101, services.TrafficPolicyLocal)
			for _, f := range fs {
				if f.node == b.node {
					name, seen, err := fetchIdentity(host.Do, f.addr)
					if err != nil || name != b.name || seen != host.IP.String() {
						t.Errorf("TCP to %s (the backend's node): backend %q saw %q (%v), want %s seeing %s", f.addr, name, seen, err, b.name, host.IP)
					}
					_, from, err := exchangeUDP(host.Do, f.addr, "local", []*backend{b})
					if err != nil || from != host.IP {
						t.Errorf("UDP to %s (the backend's node): the backend saw %s (%v), want %s", f.addr, from, err, host.IP)
					}
					continue
				}
				conns := b.conns.Load()
				if got, err := sim.FetchTCP(host.Do, f.addr, 2*time.Second); err == nil {
					t.Errorf("TCP to %s (node %d, no local endpoint): answered %q, want no connection", f.addr, f.node+1, got)
				}
				if got, err := sim.ExchangeUDP(host.Do, f.addr, []byte("not local"), 2*time.Second); err == nil {
					t.Errorf("UDP to %s (node %d, no local endpoint): answered %q, want nothing", f.addr, f.node+1, got)
				}
				if n := b.conns.Load() - conns; n != 0 {
					t.Errorf("through %s (node %d), which has no local endpoint, the backend accepted %d connections", f.addr, f.node+1, n)
				}
				select {
				case d := <-b.udp:
					t.Errorf("through %s (node %d), which has no local endpoint, the backend received %q from %s", f.addr, f.node+1, d.Data, d.From)
				default:
				}
				client := c.pods[f.node][0]
				if name, seen, err := fetchIdentity(client.Do, f.addr); err != nil || name != b.name || seen != client.IP.String() {
					t.Errorf("a pod on node %d to %s: backend %q saw %q (%v), want %s seeing the pod's %s", f.node+1, f.addr, name, seen, err, b.name, client.IP)
				}
			}
		})
	}
}
