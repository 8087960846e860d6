// Package nodeport_test drives traffic from a host outside the node to
// NodePort and external-IP frontends, through the uplink's from_netdev.
package nodeport_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

var (
	podCIDR  = netip.MustParsePrefix("10.210.0.0/24")
	nodeAddr = netip.MustParsePrefix("10.250.0.1/24")
	outAddr  = netip.MustParsePrefix("10.250.0.2/24")
)

// frontend writes one frontend with its backends into the pinned maps, in
// the order the datapath relies on: backends, slots, then the frontend.
func frontend(t *testing.T, root string, id uint32, addr netip.Addr, port uint16, scope maps.SvcScope, backends ...netip.AddrPort) {
	t.Helper()
	open := func(name string) *ebpf.Map {
		m, err := maps.OpenPinned(root, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	bm, sm, svcm := open(maps.MapBackends), open(maps.MapSvcSlots), open(maps.MapServices)
	for i, b := range backends {
		bid := id*100 + uint32(i) + 1
		be := maps.Backend{Addr: maps.Addr16(b.Addr()), Port: maps.Port(b.Port()), Family: maps.FamilyIPv4}
		if err := bm.Update(&bid, &be, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		sk := maps.SlotKey{SvcId: id, Slot: uint32(i) + 1}
		if err := sm.Update(&sk, &bid, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	key := maps.SvcKey{Port: maps.Port(port), Proto: syscall.IPPROTO_TCP, Family: maps.FamilyIPv4, Scope: uint8(scope)}
	if addr.IsValid() {
		key.Addr = maps.Addr16(addr)
	}
	info := maps.SvcInfo{Id: id, Backends: uint16(len(backends))}
	if !addr.IsValid() {
		info.Flags = maps.SvcFlagNodePort
	}
	if err := svcm.Update(&key, &info, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
}

// serve runs an HTTP-less echo of the pod's own name on port 8080.
func serve(t *testing.T, p *sim.Pod) {
	t.Helper()
	// Answer with the pod's name and the client address it saw.
	ln, err := sim.ServeTCP(p.Do, net.JoinHostPort(p.IP.String(), "8080"), func(c net.Conn) string {
		return p.Name + " " + c.RemoteAddr().(*net.TCPAddr).IP.String()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

func fetch(o *sim.Outside, addr string) (string, error) {
	return sim.FetchTCP(o.Do, addr, 2*time.Second)
}

func newNode(t *testing.T) (*sim.Node, []*sim.Pod) {
	t.Helper()
	node, err := sim.NewNode("np", podCIDR, sim.WithUplink(nodeAddr, outAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	var pods []*sim.Pod
	for _, name := range []string{"web-1", "web-2"} {
		p, err := node.AddPod(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		serve(t, p)
		pods = append(pods, p)
	}
	return node, pods
}

func TestNodePortFromOutside(t *testing.T) {
	node, pods := newNode(t)
	backends := []netip.AddrPort{netip.AddrPortFrom(pods[0].IP, 8080), netip.AddrPortFrom(pods[1].IP, 8080)}
	frontend(t, node.PinRoot, 1, netip.Addr{}, 30080, maps.ScopeExternal, backends...)

	seen := map[string]int{}
	for i := 0; i < 40; i++ {
		got, err := fetch(node.Outside, net.JoinHostPort(node.Outside.NodeIP.String(), "30080"))
		if err != nil {
			t.Fatalf("request %d to NodePort: %v", i, err)
		}
		name, client, ok := strings.Cut(got, " ")
		if !ok {
			t.Fatalf("odd answer %q", got)
		}
		// externalTrafficPolicy semantics: local backends see the real client.
		if client != node.Outside.IP.String() {
			t.Fatalf("backend saw client %s, want the outside host %s", client, node.Outside.IP)
		}
		seen[name]++
	}
	if len(seen) != 2 {
		t.Fatalf("NodePort used backends %v, want both", seen)
	}
	// In through from_netdev straight into the pods, back out through
	// from_pod and the FIB: the node's stack routed none of it.
	if n := counter(t, node, maps.HookFromNetdev, maps.ReasonForwardLocal); n < 40*3 {
		t.Fatalf("from_netdev delivered %d packets to pods, want at least %d", n, 40*3)
	}
	if n := counter(t, node, maps.HookXDP, maps.ReasonPassTranslated); n < 40*3 {
		t.Fatalf("XDP translated %d packets, want at least %d", n, 40*3)
	}
	if n := counter(t, node, maps.HookFromPod, maps.ReasonForwardFIB); n < 40*3 {
		t.Fatalf("from_pod routed %d replies out by FIB, want at least %d", n, 40*3)
	}

	// A port nobody serves is not a frontend: the node's own stack answers
	// (nothing listens, so the connection is refused), untouched by us.
	if _, err := fetch(node.Outside, net.JoinHostPort(node.Outside.NodeIP.String(), "30081")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("unserved port: %v, want connection refused", err)
	}
}

func TestNodePortNoBackendsRejects(t *testing.T) {
	node, _ := newNode(t)
	frontend(t, node.PinRoot, 2, netip.Addr{}, 30090, maps.ScopeExternal)
	start := time.Now()
	_, err := fetch(node.Outside, net.JoinHostPort(node.Outside.NodeIP.String(), "30090"))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("NodePort without backends: %v, want connection refused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("rejection took %v: it should be an immediate ICMP, not a timeout", d)
	}
}

func TestExternalIP(t *testing.T) {
	node, pods := newNode(t)
	// An external IP routed to the node (here: the outside host routes it
	// via the node's uplink address).
	ext := netip.MustParseAddr("10.251.0.100")
	frontend(t, node.PinRoot, 3, ext, 80, maps.ScopeExternal, netip.AddrPortFrom(pods[1].IP, 8080))
	if err := node.Outside.Do(func() error { return routeVia(ext, node.Outside.NodeIP) }); err != nil {
		t.Fatal(err)
	}
	got, err := fetch(node.Outside, net.JoinHostPort(ext.String(), "80"))
	if err != nil {
		t.Fatalf("external IP: %v", err)
	}
	if want := "web-2 " + node.Outside.IP.String(); got != want {
		t.Fatalf("external IP answered %q, want %q", got, want)
	}
}

func counter(t *testing.T, n *sim.Node, hook maps.Hook, reason maps.Reason) uint64 {
	t.Helper()
	v, err := n.Packets(hook, reason)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// routeVia adds a host route to dst through gw in the current namespace.
func routeVia(dst, gw netip.Addr) error {
	return netlink.RouteAdd(&netlink.Route{
		Dst: &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(32, 32)},
		Gw:  gw.AsSlice(),
	})
}
