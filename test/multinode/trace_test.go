package multinode_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
	"github.com/podpath/podpath/trace"
	"github.com/vishvananda/netlink"
)

// dumpMaps is every pinned map of the node at root as bpftool prints it
// (per-CPU values included), the counting maps aside (see below).
func dumpMaps(root string) (map[string]string, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, e := range entries {
		if e.IsDir() || slices.Contains(maps.DryRunPrivate, e.Name()) {
			continue
		}
		b, err := exec.Command("bpftool", "-j", "map", "dump", "pinned", filepath.Join(root, e.Name())).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("bpftool map dump %s: %v: %s", e.Name(), err, b)
		}
		out[e.Name()] = string(b)
	}
	return out, nil
}

// The maps real packets move by their passing alone (counts, the drop
// events' bucket) are maps.DryRunPrivate: a dry run gets fresh ones, which
// TestDryRunUsesNoLiveCounters checks by map id. The background traffic of
// the nodes (ARP) moves them at any time, so the dumps leave them out.

// traceOn runs req on node n.
func traceOn(t *testing.T, c *cluster, n int, req trace.Request) *trace.Result {
	t.Helper()
	var res *trace.Result
	err := c.nodes[n].Do(func() error {
		tr, err := trace.Open(c.nodes[n].StateDir)
		if err != nil {
			return err
		}
		defer tr.Close()
		res, err = tr.Trace(req)
		return err
	})
	if errors.Is(err, progrun.ErrNoIngressIfindex) {
		t.Skipf("podpath trace refuses to run here, as it should: %v", err)
	}
	if err != nil {
		t.Fatalf("trace %+v on node %d: %v", req, n+1, err)
	}
	return res
}

// traceQuiet runs req on node n and checks that no pinned map of the node
// changed, byte for byte (the dry run opens no other node's).
func traceQuiet(t *testing.T, c *cluster, n int, req trace.Request) *trace.Result {
	t.Helper()
	root := c.nodes[n].PinRoot
	before, err := dumpMaps(root)
	if err != nil {
		t.Fatal(err)
	}
	res := traceOn(t, c, n, req)
	after, err := dumpMaps(root)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range before {
		if after[name] != b {
			t.Fatalf("node %d's map %s changed during a trace of %+v:\nbefore: %s\nafter:  %s", n+1, name, req, b, after[name])
		}
	}
	return res
}

// A dry run's programs use none of the node's maps that traffic counts
// in: their map ids are not those of the pins (maps.DryRunPrivate), and
// every other map they use is the node's own pin, the run's trace maps or
// their constants.
func TestDryRunUsesNoLiveCounters(t *testing.T) {
	c := sharedCluster(t, routingModes[0])
	node := c.nodes[0]
	ids := map[ebpf.MapID]string{}
	entries, err := os.ReadDir(node.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(node.PinRoot, e.Name()), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ids[id] = e.Name()
	}
	cfg, err := loader.ReadNodeConfig(node.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	err = node.Do(func() error {
		d, err := loader.LoadDryRun(cfg)
		if err != nil {
			return err
		}
		defer d.Close()
		own := map[ebpf.MapID]bool{}
		for _, m := range []*ebpf.Map{d.Log, d.CT} {
			info, err := m.Info()
			if err != nil {
				return err
			}
			id, _ := info.ID()
			own[id] = true
		}
		for name, p := range d.Programs {
			info, err := p.Info()
			if err != nil {
				return err
			}
			used, ok := info.MapIDs()
			if !ok {
				return fmt.Errorf("%s: this kernel does not list a program's maps", name)
			}
			live := 0
			for _, id := range used {
				pin, isPin := ids[id]
				switch {
				case isPin && slices.Contains(maps.DryRunPrivate, pin):
					t.Errorf("dry-run %s uses the node's %s", name, pin)
				case isPin:
					live++
				case own[id]:
				default:
					m, err := ebpf.NewMapFromID(id)
					if err != nil {
						return err
					}
					mi, _ := m.Info()
					m.Close()
					// .rodata: the constants, frozen.
					if !slices.Contains(maps.DryRunPrivate, mi.Name) && !slices.Contains(maps.ScratchMaps, mi.Name) && mi.Name != ".rodata" {
						t.Errorf("dry-run %s uses map %d (%s), neither a pin of the node, nor a fresh copy of a counting map, nor its trace maps, nor its constants, nor working memory", name, id, mi.Name)
					}
				}
			}
			if live == 0 {
				t.Errorf("dry-run %s reads none of the node's maps", name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// hostVeth is the name of the host-side device of node's pod at addr.
func hostVeth(t *testing.T, node *sim.Node, addr netip.Addr) string {
	t.Helper()
	eps, err := maps.ListEndpoints(node.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range eps {
		if ep.IP == addr {
			var name string
			err := node.Do(func() error {
				l, err := netlink.LinkByIndex(int(ep.Info.Ifindex))
				if err == nil {
					name = l.Attrs().Name
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			return name
		}
	}
	t.Fatalf("no endpoint %s on node %s", addr, node.Name)
	return ""
}

// traceCLI runs podpath trace -o json with args in node n's namespace.
func traceCLI(t *testing.T, c *cluster, n int, args ...string) *trace.Result {
	t.Helper()
	bin, err := sim.BuildPodpath(filepath.Join(os.TempDir(), "podpath-multinode-cli"))
	if err != nil {
		t.Fatal(err)
	}
	node := c.nodes[n]
	cmd := exec.Command(bin, append([]string{"--pin-root", node.PinRoot, "--state-dir", node.StateDir, "-o", "json", "trace"}, args...)...)
	var out []byte
	if err := node.Do(func() (err error) { out, err = cmd.Output(); return err }); err != nil {
		t.Fatalf("podpath trace %v: %v: %s", args, err, out)
	}
	var r trace.Result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("podpath trace -o json: %v: %s", err, out)
	}
	return &r
}

// dialFrom connects from the namespace do runs in, from source port
// sport, to addr, and returns the backend's answer (identify).
func dialFrom(do func(func() error) error, sport uint16, addr string) (string, error) {
	var got string
	err := do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{Port: int(sport)}, Timeout: ioTimeout}
		conn, err := d.Dial("tcp4", addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(ioTimeout))
		b, err := io.ReadAll(conn)
		got = strings.TrimSpace(string(b))
		return err
	})
	return got, err
}

func hooks(r *trace.Result) string {
	var hs []string
	for _, h := range r.Hops {
		hs = append(hs, h.Hook+"("+h.Action+")")
	}
	return strings.Join(hs, " -> ")
}

func expectTrace(t *testing.T, r *trace.Result, outcome, where, hookPath string, final netip.AddrPort) {
	t.Helper()
	if r.Outcome != outcome || !strings.Contains(r.Where, where) || hooks(r) != hookPath || (final.IsValid() && r.Final.Dst != final) {
		t.Errorf("trace: %s %s via %s, final %s; want %s %q via %s, to %s", r.Outcome, r.Where, hooks(r), r.Final, outcome, where, hookPath, final)
	}
}

// podpath trace says what the datapath does with a packet, hook by hook,
// and what it says is what real traffic then does: the same hooks, the
// same backend for the same flow, the same translation. The trace itself
// changes no map of any node (dumped before and after, every map). Each
// case runs in both routing modes on the shared three-node cluster.
func TestTraceAgreesWithTraffic(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := sharedCluster(t, mode)
			client := c.pods[0][0]
			b1 := c.addBackend(t, 1, "tr-b1")
			b2 := c.addBackend(t, 2, "tr-b2")
			bLocal := c.addBackend(t, 0, "tr-b0")
			egress := "to_netdev"
			if mode == "vxlan" {
				egress = "to_overlay"
			}
			// A pod's packets for another node leave through the uplink
			// in both modes: from_pod encapsulates them itself.
			podEgress := "to_netdev"
			ingress := "from_netdev"
			if mode == "vxlan" {
				ingress = "from_overlay"
			}

			t.Run("pod to pod on another node", func(t *testing.T) {
				dst := netip.AddrPortFrom(b1.pod.IP, backendPort)
				r := traceQuiet(t, c, 0, trace.Request{From: client.IP.String(), To: dst, Proto: "tcp"})
				where := ""
				if mode == "vxlan" {
					where = "encapsulated by from_pod towards node " + c.nodes[1].Address.String()
				}
				expectTrace(t, r, "sent", where, "from_pod(redirect) -> "+podEgress+"(pass)", dst)
				if r.Final.Src.Addr() != client.IP {
					t.Errorf("trace: the packet leaves from %s, want the pod's own %s (no NAT between pods)", r.Final.Src, client.IP)
				}
				switch {
				case mode != "vxlan" && r.Outer != nil:
					t.Errorf("trace: routed directly, the packet leaves encapsulated in %s", r.Outer)
				case mode == "vxlan" && (r.Outer == nil || r.Outer.Src.Addr() != c.nodes[0].Address || r.Outer.Dst.Addr() != c.nodes[1].Address ||
					r.Outer.Dst.Port() != loader.DefaultVXLANPort || r.Outer.Proto != "udp"):
					t.Errorf("trace: encapsulated as %v, want UDP from %s to %s port %d", r.Outer, c.nodes[0].Address, c.nodes[1].Address, loader.DefaultVXLANPort)
				}
				// The same packet as the backend's node receives it.
				r = traceQuiet(t, c, 1, trace.Request{From: client.IP.String(), To: dst, Proto: "tcp"})
				first := ingress
				if mode != "vxlan" {
					first = "xdp_netdev(pass) -> from_netdev"
				}
				expectTrace(t, r, "delivered", "into pod "+b1.pod.IP.String(), first+"(redirect)", dst)
				name, seen, err := fetchIdentity(client.Do, dst.String())
				if err != nil || name != b1.name || seen != client.IP.String() {
					t.Errorf("real TCP: backend %q saw %q (%v), want %s seeing %s", name, seen, err, b1.name, client.IP)
				}
				// The command says the same, by the host-side device.
				veth := hostVeth(t, c.nodes[1], b1.pod.IP)
				cli := traceCLI(t, c, 1, "--from", veth, "--to", client.IP.String(), "--proto", "icmp")
				if cli.Outcome != "sent" || cli.Final.Src.Addr() != b1.pod.IP || cli.Final.Dst.Addr() != client.IP {
					t.Errorf("podpath trace from %s to %s: %s %s, as %s", veth, client.IP, cli.Outcome, cli.Where, cli.Final)
				}
			})

			t.Run("the node itself to pods", func(t *testing.T) {
				node := c.nodes[0]
				dst := netip.AddrPortFrom(b1.pod.IP, backendPort)
				r := traceQuiet(t, c, 0, trace.Request{From: node.Address.String(), To: dst, Proto: "tcp"})
				expectTrace(t, r, "sent", "", egress+"(pass)", dst)
				local := netip.AddrPortFrom(bLocal.pod.IP, backendPort)
				r = traceQuiet(t, c, 0, trace.Request{From: node.Address.String(), To: local, Proto: "tcp"})
				expectTrace(t, r, "delivered", "into pod "+bLocal.pod.IP.String(), "to_pod(pass)", local)
				for _, want := range []*backend{b1, bLocal} {
					if name, seen, err := fetchIdentity(node.Do, netip.AddrPortFrom(want.pod.IP, backendPort).String()); err != nil || name != want.name || seen != node.Address.String() {
						t.Errorf("real TCP from the node to %s: %q saw %q (%v)", want.name, name, seen, err)
					}
				}
			})

			t.Run("ClusterIP, the flow's backend", func(t *testing.T) {
				vip := netip.MustParseAddr("10.96.40.1")
				c.applyService(t, services.Service{Namespace: "mn", Name: "tr-svc", ClusterIP: vip, Algorithm: services.AlgorithmMaglev,
					Ports: []services.Port{{Name: "tcp", Port: 80, TargetPort: backendPort}}}, b1, b2, bLocal)
				byIP := map[netip.Addr]*backend{b1.pod.IP: b1, b2.pod.IP: b2, bLocal.pod.IP: bLocal}
				seenBackends := map[string]bool{}
				for sport := uint16(41000); sport < 41006; sport++ {
					req := trace.Request{From: client.IP.String(), To: netip.AddrPortFrom(vip, 80), Proto: "tcp", SrcPort: sport}
					r := traceQuiet(t, c, 0, req)
					want := byIP[r.Final.Dst.Addr()]
					if want == nil || r.Final.Dst.Port() != backendPort {
						t.Fatalf("trace from port %d: ends at %s (%s %s), no backend of the service", sport, r.Final.Dst, r.Outcome, r.Where)
					}
					path := "from_pod(redirect) -> " + podEgress + "(pass)"
					outcome, where := "sent", ""
					if want == bLocal {
						path, outcome, where = "from_pod(redirect)", "delivered", "into pod "+bLocal.pod.IP.String()
					}
					expectTrace(t, r, outcome, where, path, netip.AddrPortFrom(want.pod.IP, backendPort))
					got, err := dialFrom(client.Do, sport, netip.AddrPortFrom(vip, 80).String())
					name, _, _ := strings.Cut(got, " ")
					if err != nil || name != want.name {
						t.Errorf("from port %d: the trace chose %s, real traffic reached %q (%v)", sport, want.name, got, err)
					}
					seenBackends[name] = true
					// The flow is still tracked (closing, for 10 s): a
					// trace of a packet of it finds it.
					req.TCPFlags = 0x10
					r = traceOn(t, c, 0, req)
					if r.Final.Dst.Addr() != want.pod.IP || !slices.ContainsFunc(r.Hops[0].Lookups, func(s string) bool { return strings.HasPrefix(s, "conntrack: an existing flow") }) {
						t.Errorf("from port %d after the connection: trace %s to %s, lookups %q; want the existing flow on %s", sport, hooks(r), r.Final.Dst, r.Hops[0].Lookups, want.name)
					}
				}
				t.Logf("backends reached from 6 ports: %v", seenBackends)
			})

			t.Run("service without backends", func(t *testing.T) {
				vip := netip.MustParseAddr("10.96.40.2")
				c.applyService(t, services.Service{Namespace: "mn", Name: "tr-empty", ClusterIP: vip,
					Ports: []services.Port{{Name: "tcp", Port: 80, TargetPort: backendPort}}})
				r := traceQuiet(t, c, 0, trace.Request{From: client.IP.String(), To: netip.AddrPortFrom(vip, 80), Proto: "tcp"})
				expectTrace(t, r, "delivered", "into pod "+client.IP.String(), "from_pod(redirect)", netip.AddrPort{})
				if r.Hops[0].Reason != "svc_reject" || r.Final.Dst.Addr() != client.IP || !strings.HasPrefix(r.Final.Proto, "icmp") {
					t.Errorf("trace: %s, final %s: want svc_reject answering the client with ICMP", r.Hops[0].Reason, r.Final)
				}
				if _, err := sim.FetchTCP(client.Do, netip.AddrPortFrom(vip, 80).String(), ioTimeout); err == nil || !strings.Contains(err.Error(), "refused") {
					t.Errorf("real TCP to a service without backends: %v, want connection refused", err)
				}
			})

			t.Run("masqueraded to a host outside", func(t *testing.T) {
				host := c.outside(t)
				dst := netip.AddrPortFrom(host.IP, 7201)
				serveTCP(t, host.Do, "outside", dst.String())
				r := traceQuiet(t, c, 0, trace.Request{From: client.IP.String(), To: dst, Proto: "tcp"})
				expectTrace(t, r, "sent", "", "from_pod(pass) -> to_netdev(pass)", dst)
				if r.Final.Src.Addr() != c.nodes[0].Address || r.Hops[1].Reason != "snat" {
					t.Errorf("trace: leaves as %s (%s), want the node's address %s (snat)", r.Final, r.Hops[1].Reason, c.nodes[0].Address)
				}
				_, seen, err := fetchIdentity(client.Do, dst.String())
				if err != nil || seen != r.Final.Src.Addr().String() {
					t.Errorf("real TCP: the host saw %q (%v), the trace said %s", seen, err, r.Final.Src.Addr())
				}
			})

			t.Run("NodePort from outside to another node's backend", func(t *testing.T) {
				host := c.outside(t)
				c.applyService(t, services.Service{Namespace: "mn", Name: "tr-np", Type: services.TypeNodePort,
					ClusterIP: netip.MustParseAddr("10.96.40.3"),
					Ports:     []services.Port{{Name: "tcp", Port: 80, TargetPort: backendPort, NodePort: 30140}}}, b1)
				fe := netip.AddrPortFrom(c.nodes[0].Address, 30140)
				r := traceQuiet(t, c, 0, trace.Request{From: host.IP.String(), To: fe, Proto: "tcp", SrcPort: 42000})
				expectTrace(t, r, "sent", "", "xdp_netdev(pass) -> from_netdev(redirect) -> "+egress+"(pass)", netip.AddrPortFrom(b1.pod.IP, backendPort))
				if r.Final.Src.Addr() != c.nodes[0].Address {
					t.Errorf("trace: leaves as %s, want the node's address as source (externalTrafficPolicy Cluster)", r.Final)
				}
				got, err := dialFrom(host.Do, 42000, fe.String())
				name, seen, _ := strings.Cut(got, " ")
				if err != nil || name != b1.name || seen != r.Final.Src.Addr().String() {
					t.Errorf("real TCP: %q (%v), want %s seeing %s as the trace said", got, err, b1.name, r.Final.Src.Addr())
				}
			})
		})
	}
}
