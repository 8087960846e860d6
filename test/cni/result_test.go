package cni_test

import (
	"encoding/json"
	"errors"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The ADD result names the host veth and the pod interface with their real
// MACs, the pod's /32 on interface 1 with the link-local gateway, the
// default route through it and the configured DNS, in exactly the shape of
// a CNI 1.1.0 result.
func TestAddResultIsSpecExact(t *testing.T) {
	dns := types.DNS{Nameservers: []string{"10.96.0.10"}, Domain: "cluster.local", Search: []string{"sim.svc.cluster.local"}, Options: []string{"ndots:5"}}
	n := newNode(t, "result", "10.77.3.0/24", sim.WithDNS(dns))
	p := addPod(t, n, "a")

	hostName := cni.HostVethName(p.ContainerID, sim.IfName)
	host, err := n.HostVeth(hostName)
	if err != nil {
		t.Fatalf("host veth %s: %v", hostName, err)
	}
	var podMAC string
	if err := p.NS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(sim.IfName)
		if err == nil {
			podMAC = l.Attrs().HardwareAddr.String()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	want := map[string]any{
		"cniVersion": "1.1.0",
		"interfaces": []any{
			map[string]any{"name": hostName, "mac": host.Attrs().HardwareAddr.String(), "mtu": float64(1500)},
			map[string]any{"name": "eth0", "mac": podMAC, "mtu": float64(1500), "sandbox": p.NS.Path()},
		},
		"ips": []any{
			map[string]any{"address": p.IP.String() + "/32", "gateway": "169.254.1.1", "interface": float64(1)},
		},
		"routes": []any{
			map[string]any{"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
		},
		"dns": map[string]any{
			"nameservers": []any{"10.96.0.10"},
			"domain":      "cluster.local",
			"search":      []any{"sim.svc.cluster.local"},
			"options":     []any{"ndots:5"},
		},
	}
	b, err := json.Marshal(p.Result)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("result:\n got %s\nwant %s", b, mustJSON(want))
	}
	if len(hostName) > 15 || !strings.HasPrefix(hostName, "pp") {
		t.Fatalf("host veth name %q", hostName)
	}

	// What the result says is what the pod got: address, routes, neighbour.
	if err := p.NS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(sim.IfName)
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1500 || l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("pod eth0 mtu %d flags %v", l.Attrs().MTU, l.Attrs().Flags)
		}
		neighs, err := netlink.NeighList(l.Attrs().Index, unix.AF_INET)
		if err != nil {
			return err
		}
		if len(neighs) != 1 || neighs[0].IP.String() != "169.254.1.1" || neighs[0].State != netlink.NUD_PERMANENT ||
			neighs[0].HardwareAddr.String() != host.Attrs().HardwareAddr.String() {
			t.Errorf("pod neighbours %+v", neighs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// The endpoint entry matches both ends and names the pod's netns.
	eps := endpoints(t, n)
	if len(eps) != 1 || eps[0].IP != p.IP {
		t.Fatalf("endpoints %+v", eps)
	}
	info := eps[0].Info
	if int(info.Ifindex) != host.Attrs().Index || info.PodMAC().String() != podMAC ||
		info.GatewayMAC().String() != host.Attrs().HardwareAddr.String() {
		t.Fatalf("endpoint info %+v", info)
	}
	// The pod's namespace cookie, where the kernel can tell it (5.14+), else 0.
	var wantCookie uint64
	inPod(t, p, func() (err error) {
		wantCookie, err = loader.NetnsCookie()
		if errors.Is(err, loader.ErrNoNetnsCookie) {
			return nil
		}
		return err
	})
	if info.NetnsCookie != wantCookie {
		t.Errorf("endpoint netns cookie %d, want the pod's %d", info.NetnsCookie, wantCookie)
	}

	if err := n.CheckPod(testContext(t), p); err != nil {
		t.Fatalf("CHECK on a healthy pod: %v", err)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// CHECK names what was tampered with: the address, a route, the gateway
// neighbour, the endpoint entry, the attachment.
func TestCheckDetectsTampering(t *testing.T) {
	n := newNode(t, "check", "10.77.4.0/24")
	cases := []struct {
		name   string
		tamper func(t *testing.T, p *sim.Pod)
		want   string
	}{
		{"address", func(t *testing.T, p *sim.Pod) {
			inPod(t, p, func() error {
				l, err := netlink.LinkByName(sim.IfName)
				if err != nil {
					return err
				}
				a, _ := netlink.ParseAddr(p.IP.String() + "/32")
				if err := netlink.AddrDel(l, a); err != nil {
					return err
				}
				other, _ := netlink.ParseAddr("10.77.4.200/32")
				return netlink.AddrAdd(l, other)
			})
		}, "lacks address"},
		{"default-route", func(t *testing.T, p *sim.Pod) {
			inPod(t, p, func() error {
				_, dst, _ := net.ParseCIDR("0.0.0.0/0")
				return netlink.RouteDel(&netlink.Route{Dst: dst})
			})
		}, "default route via 169.254.1.1"},
		{"neighbour", func(t *testing.T, p *sim.Pod) {
			inPod(t, p, func() error {
				l, err := netlink.LinkByName(sim.IfName)
				if err != nil {
					return err
				}
				return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
					IP: net.ParseIP("169.254.1.1"), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 1}})
			})
		}, "pod neighbour 169.254.1.1 is 02:00:00:00:00:01"},
		{"endpoint", func(t *testing.T, p *sim.Pod) {
			eps, err := maps.OpenEndpoints(n.PinRoot)
			if err != nil {
				t.Fatal(err)
			}
			defer eps.Close()
			if err := eps.Delete(p.IP); err != nil {
				t.Fatal(err)
			}
		}, "not in the endpoints map"},
		{"attachment", func(t *testing.T, p *sim.Pod) {
			if err := n.Do(func() error {
				return loader.DetachTC(n.PinRoot, maps.ProgFromPod, cni.HostVethName(p.ContainerID, sim.IfName), loader.Ingress)
			}); err != nil {
				t.Fatal(err)
			}
		}, "from_pod is not attached"},
		{"to_pod", func(t *testing.T, p *sim.Pod) {
			if err := n.Do(func() error {
				return loader.DetachTC(n.PinRoot, maps.ProgToPod, cni.HostVethName(p.ContainerID, sim.IfName), loader.Egress)
			}); err != nil {
				t.Fatal(err)
			}
		}, "to_pod is not attached"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := addPod(t, n, tc.name)
			if err := n.CheckPod(testContext(t), p); err != nil {
				t.Fatalf("CHECK before tampering: %v", err)
			}
			tc.tamper(t, p)
			err := n.CheckPod(testContext(t), p)
			if err == nil {
				t.Fatal("CHECK passed after tampering")
			}
			if code := cniCode(err); code != cni.CodeCheckFailed {
				t.Errorf("CHECK error code %d, want %d: %v", code, cni.CodeCheckFailed, err)
			}
			t.Logf("CHECK: %v", err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("CHECK error %q does not say %q", err, tc.want)
			}
		})
	}
}
