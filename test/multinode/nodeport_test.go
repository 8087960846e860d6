package multinode_test

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/services"
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

// nodePortSetup is, on the mode's shared cluster, a backend named name on
// the second node behind a NodePort service on port (TCP and UDP) with the
// given externalTrafficPolicy, and the cluster's outside host as client.
func nodePortSetup(t *testing.T, mode, name, clusterIP string, port int32, policy services.TrafficPolicy) (*cluster, *sim.Outside, *backend) {
	t.Helper()
	c := sharedCluster(t, mode)
	host := c.outside(t)
	b := c.addBackend(t, 1, name)
	c.applyService(t, services.Service{
		Namespace: "mn", Name: name, Type: services.TypeNodePort,
		ClusterIP: netip.MustParseAddr(clusterIP),
		Ports: []services.Port{
			{Name: "tcp", Port: 80, TargetPort: backendPort, NodePort: port},
			{Name: "udp", Protocol: services.ProtocolUDP, Port: 80, TargetPort: backendPort, NodePort: port},
		},
		ExternalTrafficPolicy: policy,
	}, b)
	return c, host, b
}

// A NodePort service with externalTrafficPolicy Cluster and its only
// backend on the second node, reached by a host on the underlay through
// every node's address over TCP and UDP. Through another node the request
// is translated there and sent across to the backend with that node's
// address as source (SNAT, as kube-proxy does: the backend's answer must
// come back through the node that translated it); the answer comes back
// from the node and port the client used.
func TestNodePortClusterPolicyRemoteBackend(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c, host, b := nodePortSetup(t, mode, "np-cluster", "10.96.30.20", 30100, services.TrafficPolicyCluster)
			for i, n := range c.nodes {
				frontend := net.JoinHostPort(n.Address.String(), "30100")
				name, seen, err := fetchIdentity(host.Do, frontend)
				if err != nil || name != b.name {
					t.Errorf("TCP to %s (node %d): backend %q: %v", frontend, i+1, name, err)
					continue
				}
				got, from, err := exchangeUDP(host.Do, frontend, "np "+strconv.Itoa(i), []*backend{b})
				if err != nil || got != b {
					t.Errorf("UDP to %s (node %d): %v", frontend, i+1, err)
					continue
				}
				if i == b.node {
					t.Logf("through the backend's own node the backend saw the client as %s over TCP, %s over UDP", seen, from)
					continue
				}
				if seen != n.Address.String() || from != n.Address {
					t.Errorf("through node %d the backend saw the client as %s over TCP and %s over UDP, want the node's address %s",
						i+1, seen, from, n.Address)
				}
			}
		})
	}
}

// A NodePort service with externalTrafficPolicy Local and its only
// backend on the second node. Through that node a host on the underlay
// reaches the backend, which sees the host's own address (no SNAT: that
// is what the policy is for). Through the other nodes, which have no
// local endpoint, nothing is forwarded: the request fails and the backend
// receives nothing. Pods still reach the service through every node's
// NodePort, as internal traffic is not narrowed by the external policy.
func TestNodePortLocalPolicy(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c, host, b := nodePortSetup(t, mode, "np-local", "10.96.30.21", 30101, services.TrafficPolicyLocal)
			for i, n := range c.nodes {
				frontend := net.JoinHostPort(n.Address.String(), "30101")
				if i == b.node {
					name, seen, err := fetchIdentity(host.Do, frontend)
					if err != nil || name != b.name || seen != host.IP.String() {
						t.Errorf("TCP to %s (the backend's node): backend %q saw %q (%v), want %s seeing %s", frontend, name, seen, err, b.name, host.IP)
					}
					_, from, err := exchangeUDP(host.Do, frontend, "local", []*backend{b})
					if err != nil || from != host.IP {
						t.Errorf("UDP to %s (the backend's node): the backend saw %s (%v), want %s", frontend, from, err, host.IP)
					}
					continue
				}
				conns := b.conns.Load()
				if got, err := sim.FetchTCP(host.Do, frontend, 2*time.Second); err == nil {
					t.Errorf("TCP to %s (node %d, no local endpoint): answered %q, want no connection", frontend, i+1, got)
				}
				if got, err := sim.ExchangeUDP(host.Do, frontend, []byte("not local"), 2*time.Second); err == nil {
					t.Errorf("UDP to %s (node %d, no local endpoint): answered %q, want nothing", frontend, i+1, got)
				}
				if n := b.conns.Load() - conns; n != 0 {
					t.Errorf("through node %d, which has no local endpoint, the backend accepted %d connections", i+1, n)
				}
				select {
				case d := <-b.udp:
					t.Errorf("through node %d, which has no local endpoint, the backend received %q from %s", i+1, d.Data, d.From)
				default:
				}
				client := c.pods[i][0]
				if name, seen, err := fetchIdentity(client.Do, frontend); err != nil || name != b.name || seen != client.IP.String() {
					t.Errorf("a pod on node %d to %s: backend %q saw %q (%v), want %s seeing the pod's %s", i+1, frontend, name, seen, err, b.name, client.IP)
				}
			}
		})
	}
}
