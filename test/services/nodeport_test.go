package services_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
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
