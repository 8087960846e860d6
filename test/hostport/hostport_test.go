// Package hostport_test publishes pod ports on the node, the way a
// container runtime asks for Docker's -p: through the CNI portMappings
// capability, with no iptables.
package hostport_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/services"
)

var (
	podCIDR  = netip.MustParsePrefix("10.230.0.0/24")
	nodeAddr = netip.MustParsePrefix("10.253.0.1/24")
	outAddr  = netip.MustParsePrefix("10.253.0.2/24")
)

func serve(t *testing.T, p *sim.Pod, port string) {
	t.Helper()
	ln, err := sim.ServeTCP(p.Do, net.JoinHostPort(p.IP.String(), port), func(c net.Conn) string {
		return p.Name + " saw " + c.RemoteAddr().(*net.TCPAddr).IP.String()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

func fetch(o *sim.Outside, addr string) (string, error) {
	return sim.FetchTCP(o.Do, addr, 2*time.Second)
}

func TestHostPortPublishesPod(t *testing.T) {
	node, err := sim.NewNode("hp", podCIDR, sim.WithUplink(nodeAddr, outAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	ctx := context.Background()
	web, err := node.AddPod(ctx, "web", sim.WithPortMappings(sim.PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}))
	if err != nil {
		t.Fatal(err)
	}
	serve(t, web, "80")
	addr := net.JoinHostPort(node.Outside.NodeIP.String(), "8080")

	got, err := fetch(node.Outside, addr)
	if err != nil {
		t.Fatalf("node:8080 -> web:80: %v", err)
	}
	if want := "web saw " + node.Outside.IP.String(); got != want {
		t.Fatalf("got %q, want %q (the client's own address)", got, want)
	}

	// A second pod asking for the same hostPort is refused, with a clear
	// error, and leaves nothing behind.
	_, err = node.AddPod(ctx, "clash", sim.WithPortMappings(sim.PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}))
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != cni.CodeHostPortConflict {
		t.Fatalf("second pod on hostPort 8080: %v, want CNI error %d", err, cni.CodeHostPortConflict)
	}
	if got, err := fetch(node.Outside, addr); err != nil || got != "web saw "+node.Outside.IP.String() {
		t.Fatalf("after the refused ADD, node:8080 answered %q, %v", got, err)
	}

	// CNI DEL closes the port again.
	if err := node.DelPod(ctx, web); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch(node.Outside, addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("after DEL, node:8080: %v, want connection refused", err)
	}
	m, err := services.Open(node.PinRoot, node.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	list, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Fatalf("services left after DEL: %+v", list)
	}
}
