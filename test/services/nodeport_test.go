package services_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
)

// fetchOutside connects from the outside host and reads the greeting.
func fetchOutside(o *sim.Outside, addr string) (backend, client string, err error) {
	var c net.Conn
	if err := o.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 3*time.Second)
		return err
	}); err != nil {
		return "", "", err
	}
	defer c.Close()
	cc, err := greet(&conn{Conn: c})
	if err != nil {
		return "", "", err
	}
	return cc.backend, cc.client, nil
}

// A NodePort service with externalTrafficPolicy Local: traffic from the
// network (external scope, from_netdev) reaches only backends marked
// local and keeps the client's address; pods reaching the same node port
// (internal scope, from_pod) reach every backend. Which backend is "local"
// is what the control plane says, so one of two pods on this node plays a
// pod on another node.
func TestNodePortLocalPolicy(t *testing.T) {
	node, err := sim.NewNode("svcnp", netip.MustParsePrefix("10.213.0.0/24"),
		nodeOptions(t, sim.WithUplink(netip.MustParsePrefix("10.251.0.1/24"), netip.MustParsePrefix("10.251.0.2/24")))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	m, err := services.Open(node.PinRoot, node.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	local, remote := addPod(t, node, "local"), addPod(t, node, "remote")
	serve(t, local)
	serve(t, remote)
	client := addPod(t, node, "client")
	svc := services.Service{
		Namespace: "e2e", Name: "np", Type: services.TypeNodePort,
		ClusterIP:             netip.MustParseAddr("10.96.0.30"),
		Ports:                 []services.Port{{Port: 80, TargetPort: 8080, NodePort: 30080}},
		ExternalTrafficPolicy: services.TrafficPolicyLocal,
		Backends: []services.Backend{
			{IP: local.IP, Ready: true, Local: true},
			{IP: remote.IP, Ready: true},
		},
	}
	if _, err := m.Apply(context.Background(), []services.Service{svc}); err != nil {
		t.Fatal(err)
	}
	nodePort := net.JoinHostPort(node.Outside.NodeIP.String(), "30080")
	for i := range 30 {
		backend, from, err := fetchOutside(node.Outside, nodePort)
		if err != nil {
			t.Fatalf("request %d from outside: %v", i, err)
		}
		if backend != "local" || from != node.Outside.IP.String() {
			t.Fatalf("from outside reached %s seeing %s, want only the local backend seeing the outside host %s", backend, from, node.Outside.IP)
		}
	}
	seen := map[string]int{}
	for i := range 60 {
		backend, _, err := request(client, nodePort)
		if err != nil {
			t.Fatalf("request %d from a pod: %v", i, err)
		}
		seen[backend]++
	}
	if seen["local"] == 0 || seen["remote"] == 0 {
		t.Fatalf("pods reaching the node port got %v, want both backends", seen)
	}
	if drops := dropCounters(t, node); drops != "" {
		t.Errorf("drops:%s", drops)
	}
}

// A client on the network downloads 4 MiB from a pod through a NodePort.
// from_pod gives the pod's segments the node's address and NodePort as
// source and routes them out of the uplink by FIB lookup; the pod's TCP
// hands its veth GSO packets of up to 64 KiB, far over the MTU, which the
// uplink cuts into segments. The lookup must not refuse them as too big
// (drop_fib_failed): the transfer would crawl on retransmissions of
// single segments and miss its deadline.
func TestNodePortDownloadFromOutside(t *testing.T) {
	const size = 4 << 20
	node, m := newNode(t, "svcnpdl", "10.222.0.0/24",
		sim.WithUplink(netip.MustParsePrefix("10.241.0.1/24"), netip.MustParsePrefix("10.241.0.2/24")))
	backend := addPod(t, node, "backend")
	serveDownload(t, m, backend, "10.96.0.31", 30031, size)
	start := time.Now()
	got, err := sim.FetchTCP(node.Outside.Do, net.JoinHostPort(node.Outside.NodeIP.String(), "30031"), 20*time.Second)
	took := time.Since(start)
	if err != nil || len(got) != size {
		t.Fatalf("downloaded %d of %d bytes in %v: %v; drops:%s", len(got), size, took, err, dropCounters(t, node))
	}
	cs, err := node.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var routed maps.Counter
	for _, c := range cs {
		if c.Hook == maps.HookFromPod && c.Reason == maps.ReasonForwardFIB {
			routed = c
		}
	}
	if routed.Packets == 0 || routed.Bytes/routed.Packets <= 1514 {
		t.Errorf("from_pod routed %d packets of %d bytes: no GSO packet, this test shows nothing", routed.Packets, routed.Bytes)
	}
	t.Logf("%d bytes in %v; from_pod routed them out as %d packets of %d bytes on average",
		size, took.Round(time.Millisecond), routed.Packets, routed.Bytes/max(routed.Packets, 1))
	if drops := dropCounters(t, node); drops != "" {
		t.Errorf("drops:%s", drops)
	}
}

// serveDownload has pod p send size bytes to every connection on port 8080,
// behind a NodePort service (clusterIP:80 and nodePort).
func serveDownload(t *testing.T, m *services.Manager, p *sim.Pod, clusterIP string, nodePort int32, size int) {
	t.Helper()
	ln, err := sim.ServeTCP(p.Do, net.JoinHostPort(p.IP.String(), "8080"), func(net.Conn) string {
		return string(make([]byte, size))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if _, err := m.Upsert(context.Background(), services.Service{
		Namespace: "e2e", Name: "download", Type: services.TypeNodePort,
		ClusterIP: netip.MustParseAddr(clusterIP),
		Ports:     []services.Port{{Port: 80, TargetPort: 8080, NodePort: nodePort}},
		Backends:  backendsOf(p),
	}); err != nil {
		t.Fatal(err)
	}
}
