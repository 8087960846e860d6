package multinode_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/services"
)

// backendPort is where every backend of these tests listens, TCP and UDP.
const backendPort = 8080

// backend is a pod serving on backendPort: TCP connections are answered
// with identify (its name and the client address it saw), UDP datagrams
// are echoed and reported on udp.
type backend struct {
	node  int // index in the cluster
	pod   *sim.Pod
	name  string
	udp   <-chan sim.Datagram
	conns *atomic.Int64 // TCP connections accepted
}

// addBackend adds a pod named name to node i, serving for the rest of the
// test.
func (c *cluster) addBackend(t *testing.T, i int, name string) *backend {
	t.Helper()
	p := c.addPod(t, i, name)
	b := &backend{node: i, pod: p, name: name, conns: new(atomic.Int64)}
	addr := netip.AddrPortFrom(p.IP, backendPort).String()
	ln, err := sim.ServeTCP(p.Do, addr, func(conn net.Conn) string {
		b.conns.Add(1)
		return identify(name)(conn)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	b.udp = serveUDP(t, p.Do, addr)
	return b
}

// applyService programs svc on every node of the cluster, with bs as its
// backends, each marked Local on its own node as the agent would from its
// EndpointSlice, for the rest of the test.
func (c *cluster) applyService(t *testing.T, svc services.Service, bs ...*backend) {
	t.Helper()
	for i, m := range c.svcs {
		s := svc
		s.Backends = nil
		for _, b := range bs {
			s.Backends = append(s.Backends, services.Backend{IP: b.pod.IP, Ready: true, Local: b.node == i, NodeName: c.nodes[b.node].Name})
		}
		if _, err := m.Upsert(context.Background(), s); err != nil {
			t.Fatalf("node %s: service %s/%s: %v", c.nodes[i].Name, s.Namespace, s.Name, err)
		}
		t.Cleanup(func() {
			if _, err := m.Delete(context.Background(), s.Namespace, s.Name); err != nil {
				t.Errorf("node %s: delete service %s/%s: %v", c.nodes[i].Name, s.Namespace, s.Name, err)
			}
		})
	}
}

// fetchIdentity connects from the namespace do runs in to addr and
// returns which backend answered and the client address it saw.
func fetchIdentity(do func(func() error) error, addr string) (name, seen string, err error) {
	got, err := sim.FetchTCP(do, addr, ioTimeout)
	if err != nil {
		return "", "", err
	}
	name, seen, ok := strings.Cut(got, " ")
	if !ok {
		return "", "", fmt.Errorf("answer %q is no backend's", got)
	}
	return name, seen, nil
}

// exchangeUDP sends one datagram from the namespace do runs in to addr on
// a socket connected there, so the answer must come from addr itself, and
// returns which of bs received it and the client address it saw.
func exchangeUDP(do func(func() error) error, addr string, msg string, bs []*backend) (*backend, netip.Addr, error) {
	got, err := sim.ExchangeUDP(do, addr, []byte(msg), ioTimeout)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	if string(got) != msg {
		return nil, netip.Addr{}, fmt.Errorf("answer %q, sent %q", got, msg)
	}
	for _, b := range bs {
		select {
		case d := <-b.udp:
			if string(d.Data) != msg {
				return nil, netip.Addr{}, fmt.Errorf("backend %s received %q, the client sent %q", b.name, d.Data, msg)
			}
			return b, d.From.Addr(), nil
		default:
		}
	}
	return nil, netip.Addr{}, fmt.Errorf("the answer to %q came back, but no backend received it", msg)
}

// names are the backends' names, sorted.
func names(bs []*backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.name)
	}
	slices.Sort(out)
	return out
}

// expectSpread sends rounds requests over TCP and rounds over UDP from
// client to frontend and checks that every one reached one of bs, which
// saw the client's address as want, and that every backend got some.
// Round robin gives each backend its turn within len(bs) new flows on
// one CPU.
func expectSpread(t *testing.T, client func(func() error) error, frontend string, bs []*backend, want netip.Addr, rounds int) {
	t.Helper()
	tcp, udp := map[string]int{}, map[string]int{}
	for i := range rounds {
		name, seen, err := fetchIdentity(client, frontend)
		if err != nil {
			t.Fatalf("TCP request %d to %s: %v", i, frontend, err)
		}
		if seen != want.String() {
			t.Errorf("TCP request %d to %s: backend %s saw the client as %s, want %s", i, frontend, name, seen, want)
		}
		tcp[name]++
		b, from, err := exchangeUDP(client, frontend, fmt.Sprintf("request %d", i), bs)
		if err != nil {
			t.Fatalf("UDP request %d to %s: %v", i, frontend, err)
		}
		if from != want {
			t.Errorf("UDP request %d to %s: backend %s saw the client as %s, want %s", i, frontend, b.name, from, want)
		}
		udp[b.name]++
	}
	for _, b := range bs {
		if tcp[b.name] == 0 || udp[b.name] == 0 {
			t.Errorf("%d requests to %s: TCP reached %v, UDP %v; want every backend of %v", rounds, frontend, tcp, udp, names(bs))
			return
		}
	}
	for name := range tcp {
		if !slices.Contains(names(bs), name) {
			t.Errorf("TCP reached %s, which is no backend of %s", name, frontend)
		}
	}
}

// A ClusterIP service programmed alike on every node, as the agent does,
// with a backend on each of the three nodes, and one whose backends are
// all on the second and third node. A pod on each node reaches every
// backend, local or on another node, over TCP and UDP: the client's node
// translates the ClusterIP to the backend and sends the packet across;
// the backend sees the client pod's own address (no SNAT between pods);
// the reply is translated back at the client's node, so it comes from the
// ClusterIP (the TCP connection to it stands, and the UDP socket connected
// to it accepts the answer).
func TestClusterIPAcrossNodes(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := sharedCluster(t, mode)
			var all []*backend
			for i := range c.nodes {
				all = append(all, c.addBackend(t, i, fmt.Sprintf("cip-%d", i+1)))
			}
			mixed := services.Service{
				Namespace: "mn", Name: "mixed", ClusterIP: netip.MustParseAddr("10.96.30.10"),
				Ports:     []services.Port{{Name: "tcp", Port: 80, TargetPort: backendPort}, {Name: "udp", Protocol: services.ProtocolUDP, Port: 80, TargetPort: backendPort}},
				Algorithm: services.AlgorithmRoundRobin,
			}
			remote := mixed
			remote.Name, remote.ClusterIP = "remote", netip.MustParseAddr("10.96.30.11")
			c.applyService(t, mixed, all...)
			c.applyService(t, remote, all[1:]...)
			for i, p := range c.pods {
				client := p[0]
				t.Run(fmt.Sprintf("from node %d", i+1), func(t *testing.T) {
					expectSpread(t, client.Do, "10.96.30.10:80", all, client.IP, 4*len(all))
					expectSpread(t, client.Do, "10.96.30.11:80", all[1:], client.IP, 4*len(all))
				})
			}
		})
	}
}
