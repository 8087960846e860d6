package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The cross_node family: a pod on one node talks to a pod on another over
// an underlay the two nodes share (sim.Underlay: a Linux bridge in a
// namespace of its own plays the switch). Every contender gets an underlay
// of its own with the same addresses and MTU:
//
//   - limit: the two node namespaces talk to each other, no pods: what the
//     underlay itself carries.
//   - flannel-vxlan: Flannel's vxlan backend built by hand from the kernel's
//     parts: per node a bridge cni0 with the pod, a VXLAN device flannel.1
//     with static FDB and neighbour entries for the other node, a route to
//     its pod CIDR through it, and Flannel's FORWARD rules.
//   - host-gw: Flannel's host-gw backend: the same bridges, a route to the
//     other node's pod CIDR via its underlay address.
//   - podpath-direct and podpath-vxlan: two sim nodes joined as peers, one
//     pod each through podpath-cni.
//   - veth-floor: podpath-direct's topology with the least a BPF datapath
//     on veth can do in place of podpath's programs (crossfloor.go).
//
// Each repetition measures throughput, then TCP_RR, then TCP_CRR, each on
// every contender in turn (the order rotated every repetition), with client
// and server pinned to the same two CPUs everywhere, so that the ratio of
// two contenders can be taken repetition by repetition.

// famCrossNode is the family's name.
const famCrossNode = "cross_node"

// Contenders of the cross_node family besides the limit.
const (
	cFlannelVXLAN  = "flannel-vxlan"
	cHostGW        = "host-gw"
	cPodpathDirect = "podpath-direct"
	cPodpathVXLAN  = "podpath-vxlan"
)

// crossNodeContenders in the order they are built and tabulated.
var crossNodeContenders = []string{cLimit, cFlannelVXLAN, cHostGW, cPodpathDirect, cPodpathVXLAN, cVethFloor}

// The same addresses for every contender: node i (1, 2) is the underlay's
// .i and owns pod CIDR 10.240.i.0/24; the pod is the first address after
// the bridge's (kernel contenders) or podpath's choice in that CIDR.
var (
	xnUnderlay = netip.MustParsePrefix("192.168.240.0/24")
	xnCluster  = netip.MustParsePrefix("10.240.0.0/16")
	xnPodCIDRs = [2]netip.Prefix{netip.MustParsePrefix("10.240.1.0/24"), netip.MustParsePrefix("10.240.2.0/24")}
)

// Flannel's VXLAN device: its name, VNI and port (the kernel's 8472, as
// podpath's overlay), and its addresses: the MAC here is fixed (Flannel
// lets the kernel pick one and publishes it) and the device's address is
// the pod CIDR's network address, /32.
const (
	flannelDev  = "flannel.1"
	flannelVNI  = 1
	flannelPort = loader.DefaultVXLANPort
)

func flannelMAC(node int) net.HardwareAddr {
	return net.HardwareAddr{0x0e, 0xfa, 0, 0, 0, byte(node + 1)}
}

// flannelRules are the filter rules flanneld writes (its FLANNEL-FWD chain
// for the cluster CIDR) so that a FORWARD policy of DROP, as Docker sets,
// cannot stop pod traffic.
var flannelRules = fmt.Sprintf(`*filter
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s %[1]s -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d %[1]s -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
`, xnCluster)

// crossBase is what every cross_node topology starts from: the topology,
// its underlay, and what removes them and everything built on them (the
// underlay's hosts, the kernel contenders' nodes, go with it).
type crossBase struct {
	t       *topology
	u       *sim.Underlay
	closers []func() error
}

func newCrossBase(contender, desc string) (*crossBase, error) {
	b := &crossBase{}
	b.t = &topology{contender: contender, close: func() error { return closeAll(b.closers) }, info: topologyInfo{Description: desc}}
	u, err := sim.NewUnderlay("bench-xn-"+contender, xnUnderlay, mtu)
	if err != nil {
		return nil, err
	}
	b.u = u
	b.closers = append(b.closers, cleanup.add("underlay "+contender, u.Close))
	return b, nil
}

// buildCross runs build on a fresh crossBase and removes everything again
// when it fails.
func buildCross(contender, desc string, build func(b *crossBase) error) (*topology, error) {
	b, err := newCrossBase(contender, desc)
	if err != nil {
		return nil, err
	}
	if err := build(b); err != nil {
		b.t.close()
		return nil, err
	}
	return b.t, nil
}

// hostNodes puts two plain node namespaces on the underlay, eth0 at its
// .1 and .2.
func (b *crossBase) hostNodes() (nodes [2]*sim.Outside, err error) {
	for i := range nodes {
		if nodes[i], err = b.u.AddHost(fmt.Sprintf("bench-xn-%s-n%d", b.t.contender, i+1), b.u.Addr(i+1)); err != nil {
			return nodes, err
		}
	}
	return nodes, nil
}

// underlayDevices are the switch's devices, for the fairness check.
func underlayDevices(u *sim.Underlay) []nsDevice {
	var out []nsDevice
	u.NS.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if name := l.Attrs().Name; name != "lo" {
				out = append(out, nsDevice{"underlay " + name, u.NS, name})
			}
		}
		return err
	})
	return out
}

// pathDevices lists a cross-node path's devices in the order a packet from
// client to server crosses them; each node's list starts at its pod.
func pathDevices(client []nsDevice, u *sim.Underlay, server []nsDevice) []nsDevice {
	out := append(slices.Clone(client), underlayDevices(u)...)
	back := slices.Clone(server)
	slices.Reverse(back)
	return append(out, back...)
}

// limitCrossTopology: the two node namespaces on the underlay talk to each
// other; nothing of a pod network is involved.
func (e *env) limitCrossTopology(context.Context) (*topology, error) {
	desc := "the limit: two node netns on the underlay (a Linux bridge in its own netns, veth to each node, MTU 1500), " +
		"client and server in the node netns themselves, no pods"
	return buildCross(cLimit, desc, func(b *crossBase) error {
		t := b.t
		hosts, err := b.hostNodes()
		if err != nil {
			return err
		}
		t.client = endpoint{Name: "limit-node1", NS: hosts[0].NS, IP: hosts[0].IP}
		t.server = endpoint{Name: "limit-node2", NS: hosts[1].NS, IP: hosts[1].IP}
		t.dst, t.wantPeer, t.connectFailuresOK = t.server.IP, t.client.IP, true
		t.devices = pathDevices([]nsDevice{{"client eth0", hosts[0].NS, "eth0"}, {"node1 uplink", hosts[0].NS, "eth0"}}, b.u,
			[]nsDevice{{"server eth0", hosts[1].NS, "eth0"}, {"node2 uplink", hosts[1].NS, "eth0"}})
		return nil
	})
}

// kernelCrossTopology: Flannel's data path made with the kernel alone. Per
// node: ip_forward=1, a bridge cni0 (the pod CIDR's .1, the pods' gateway)
// with the pod's veth, Flannel's FORWARD rules; then either (vxlan) a VXLAN
// device flannel.1 (VNI 1, port 8472, local address the node's, on eth0,
// nolearning, address 10.240.i.0/32), a permanent FDB entry sending the
// other node's VTEP MAC to its address, a permanent neighbour entry for
// the other flannel.1's address, and a route to the other pod CIDR via that
// address, onlink, on flannel.1, as flanneld programs them; or (host-gw) a
// route to the other pod CIDR via the other node's underlay address.
func (e *env) kernelCrossTopology(ctx context.Context, vxlan bool) (*topology, error) {
	name, podMTU := cHostGW, mtu
	desc := "Flannel host-gw built by hand: per node a bridge cni0 (10.240.i.1/24) with the pod's veth, ip_forward=1, Flannel's FORWARD rules, " +
		"a route to the other node's pod CIDR via its underlay address; pod MTU 1500"
	if vxlan {
		name, podMTU = cFlannelVXLAN, mtu-loader.VXLANOverhead
		desc = fmt.Sprintf("Flannel vxlan built by hand: per node a bridge cni0 (10.240.i.1/24) with the pod's veth, ip_forward=1, Flannel's FORWARD rules, "+
			"a kernel VXLAN device %s (VNI %d, port %d, nolearning, local = node address, address 10.240.i.0/32), a permanent bridge fdb entry "+
			"(remote VTEP MAC -> remote node address), a permanent neighbour entry (remote %s address -> its MAC) and a route to the remote pod CIDR "+
			"via the remote %s address onlink; pod, cni0 and %s MTU %d (the underlay's less 50)", flannelDev, flannelVNI, flannelPort, flannelDev, flannelDev, flannelDev, podMTU)
	}
	return buildCross(name, desc, func(b *crossBase) error {
		t := b.t
		nodes, err := b.hostNodes()
		if err != nil {
			return err
		}
		var pods [2]endpoint
		for i := range nodes {
			node := nodes[i].NS
			if err := writeSysctl(node, "net.ipv4.ip_forward", "1"); err != nil {
				return err
			}
			gw := netip.PrefixFrom(xnPodCIDRs[i].Addr().Next(), xnPodCIDRs[i].Bits())
			if err := addBridge(node, "cni0", gw, podMTU); err != nil {
				return err
			}
			if pods[i], err = addBridgedPod(node, "cni0", "vethpod", "xn-"+name, fmt.Sprintf("pod%d", i+1), gw.Addr().Next(), gw, podMTU, &b.closers); err != nil {
				return err
			}
			if _, err := runIn(ctx, node, flannelRules, "iptables-restore"); err != nil {
				return fmt.Errorf("load Flannel's rules: %w", err)
			}
			if vxlan {
				if err := addFlannelVTEP(node, i, nodes[i].IP, podMTU); err != nil {
					return err
				}
			}
		}
		for i := range nodes {
			other := 1 - i
			if vxlan {
				err = flannelPeer(nodes[i].NS, other, nodes[other].IP)
			} else {
				err = nodes[i].NS.Do(func(ns.NetNS) error {
					up, err := netlink.LinkByName("eth0")
					if err != nil {
						return err
					}
					return netlink.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Dst: prefixIPNet(xnPodCIDRs[other]), Gw: net.IP(nodes[other].IP.AsSlice())})
				})
			}
			if err != nil {
				return fmt.Errorf("%s: node %d's route to node %d: %w", name, i+1, other+1, err)
			}
		}
		t.client, t.server = pods[0], pods[1]
		t.dst, t.wantPeer, t.connectFailuresOK = t.server.IP, t.client.IP, true
		backend, _ := runIn(ctx, nodes[0].NS, "", "iptables", "--version")
		t.info.Notes = append(t.info.Notes, "rules loaded with "+strings.TrimSpace(backend)+"; a Flannel node also has br_netfilter "+
			"(bridge-nf-call-iptables=1) and Flannel's nat FLANNEL-POSTRTG masquerade rules: both left out here, so no conntrack on this path, the kernel's best case")
		// The path: for VXLAN the packets flannel.1 sent, for host-gw the
		// packets FLANNEL-FWD accepted, on each node.
		for i, pc := range []**pathCounter{&t.path, &t.replyPath} {
			node, side := nodes[i].NS, []string{"client", "server"}[i]
			if vxlan {
				*pc = &pathCounter{name: side + "_node_" + flannelDev + "_tx_pkts", required: true,
					read: func() (uint64, error) { return linkTxPackets(node, flannelDev) }}
			} else {
				*pc = &pathCounter{name: side + "_node_flannel_fwd_accept_pkts", required: true,
					read: func() (uint64, error) { return ruleCounter(ctx, node, "-s "+xnCluster.String()) }}
			}
		}
		var sides [2][]nsDevice
		for i, side := range []string{"client", "server"} {
			node, n := nodes[i].NS, fmt.Sprintf("node%d ", i+1)
			sides[i] = []nsDevice{{side + " eth0", pods[i].NS, "eth0"}, {n + "pod veth", node, "vethpod"}, {n + "cni0", node, "cni0"}}
			if vxlan {
				sides[i] = append(sides[i], nsDevice{n + "vxlan", node, flannelDev})
			}
			sides[i] = append(sides[i], nsDevice{n + "uplink", node, "eth0"})
		}
		t.devices = pathDevices(sides[0], b.u, sides[1])
		return nil
	})
}

// addFlannelVTEP creates node's flannel.1 as flanneld does: VXLAN on the
// node's eth0 and address, learning off, its MAC fixed, the pod CIDR's
// network address as its own.
func addFlannelVTEP(node ns.NetNS, i int, local netip.Addr, podMTU int) error {
	err := node.Do(func(ns.NetNS) error {
		up, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		la := netlink.NewLinkAttrs()
		la.Name, la.MTU, la.HardwareAddr = flannelDev, podMTU, flannelMAC(i)
		vx := &netlink.Vxlan{LinkAttrs: la, VxlanId: flannelVNI, VtepDevIndex: up.Attrs().Index,
			SrcAddr: net.IP(local.AsSlice()), Port: flannelPort, Learning: false}
		if err := netlink.LinkAdd(vx); err != nil {
			return fmt.Errorf("add %s: %w", flannelDev, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return configureIf(node, flannelDev, netip.PrefixFrom(xnPodCIDRs[i].Addr(), 32))
}

// flannelPeer programs what flanneld programs on a node for another node
// (other) whose underlay address is remote: the FDB entry, the neighbour
// entry and the route.
func flannelPeer(node ns.NetNS, other int, remote netip.Addr) error {
	vtep := xnPodCIDRs[other].Addr()
	return node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(flannelDev)
		if err != nil {
			return err
		}
		idx, mac := l.Attrs().Index, flannelMAC(other)
		fdb := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
			IP: net.IP(remote.AsSlice()), HardwareAddr: mac}
		if err := netlink.NeighSet(fdb); err != nil {
			return fmt.Errorf("fdb %s dst %s: %w", mac, remote, err)
		}
		arp := &netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: net.IP(vtep.AsSlice()), HardwareAddr: mac}
		if err := netlink.NeighSet(arp); err != nil {
			return fmt.Errorf("neighbour %s lladdr %s: %w", vtep, mac, err)
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: prefixIPNet(xnPodCIDRs[other]), Gw: net.IP(vtep.AsSlice()), Flags: int(netlink.FLAG_ONLINK)})
	})
}

// linkTxPackets is a device's transmitted packet count.
func linkTxPackets(n ns.NetNS, dev string) (uint64, error) {
	var v uint64
	err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		if s := l.Attrs().Statistics; s != nil {
			v = s.TxPackets
		}
		return nil
	})
	return v, err
}

// podpathCrossTopology: two sim nodes on the underlay routing as routing
// says, one pod each by podpath-cni, peers of each other (sim.JoinAll).
func (e *env) podpathCrossTopology(ctx context.Context, routing string) (*topology, error) {
	return e.podpathCrossTopologyNamed(ctx, "", routing)
}

// podpathCrossTopologyNamed is podpathCrossTopology under another name
// than its routing's contender (name "": that one).
func (e *env) podpathCrossTopologyNamed(ctx context.Context, as, routing string) (*topology, error) {
	name, reason := cPodpathDirect, "forward_routed"
	desc := "podpath direct routing: two sim nodes (podpath node init --routing direct, ip_forward=1) on the underlay, one pod each by podpath-cni, " +
		"peers of each other; from_pod routes the pod's packet out of the uplink (bpf_fib_lookup, bpf_redirect_neigh), " +
		"from_netdev on the other node redirects it into the pod; pod MTU 1500 (the uplink's)"
	if routing == loader.RoutingVXLAN {
		name, reason = cPodpathVXLAN, "forward_tunnel"
		desc = fmt.Sprintf("podpath VXLAN overlay: two sim nodes (podpath node init --routing vxlan) on the underlay, one pod each by podpath-cni, "+
			"peers of each other; from_pod encapsulates the pod's packet itself (bpf_skb_adjust_room, outer IPv4/UDP/VXLAN to port %d) and sends it out of the uplink "+
			"(bpf_redirect_neigh; GSO packets take %s, external mode, with the tunnel key), from_netdev on the other node decapsulates it (bpf_skb_adjust_room) "+
			"and redirects it into the pod; pod MTU 1450 (the uplink's less 50)", loader.DefaultVXLANPort, loader.OverlayDevice)
	}
	if as != "" {
		name = as
	}
	bin, err := e.podpathCNI()
	if err != nil {
		return nil, err
	}
	r, err := reasonNamed(reason)
	if err != nil {
		return nil, err
	}
	return buildCross(name, desc, func(b *crossBase) error {
		t := b.t
		var nodes []*sim.Node
		var counters [2]*ebpf.Map
		var sides [2][]nsDevice
		for i, role := range []string{"client", "server"} {
			node, closeNode, err := newSimNode(fmt.Sprintf("xn-%s-n%d", name, i+1), xnPodCIDRs[i], sim.WithCNIBin(bin),
				sim.WithUnderlay(b.u, b.u.Addr(i+1)), sim.WithLoaderConfig(func(c *loader.Config) {
					c.Routing, c.XDPMode = routing, loader.XDPAuto // a node's default: no XDP on its veth uplink
				}))
			if err != nil {
				return err
			}
			b.closers = append(b.closers, closeNode)
			nodes = append(nodes, node)
			p, err := node.AddPod(ctx, role)
			if err != nil {
				return err
			}
			ep := endpoint{Name: name + "-" + role, NS: p.NS, IP: p.IP}
			if i == 0 {
				t.client = ep
			} else {
				t.server = ep
			}
			if counters[i], err = maps.OpenPinned(node.PinRoot, maps.MapCounters); err != nil {
				return err
			}
			b.closers = append(b.closers, counters[i].Close)
			t.info.Notes = append(t.info.Notes, fmt.Sprintf("node%d pin root %s", i+1, node.PinRoot))

			n := fmt.Sprintf("node%d ", i+1)
			sides[i] = []nsDevice{{role + " eth0", p.NS, sim.IfName}}
			for _, iface := range p.Result.Interfaces {
				if iface.Sandbox == "" {
					sides[i] = append(sides[i], nsDevice{n + "pod veth", node.NS, iface.Name})
				}
			}
			if routing == loader.RoutingVXLAN {
				sides[i] = append(sides[i], nsDevice{n + "vxlan", node.NS, loader.OverlayDevice})
			}
			sides[i] = append(sides[i], nsDevice{n + "uplink", node.NS, sim.UplinkName})
		}
		t.devices = pathDevices(sides[0], b.u, sides[1])
		if err := sim.JoinAll(nodes...); err != nil {
			return err
		}
		t.dst, t.wantPeer, t.connectFailuresOK = t.server.IP, t.client.IP, true
		c0, c1 := counters[0], counters[1]
		t.path = &pathCounter{name: "client_node_from_pod_" + reason + "_pkts", required: true,
			read: func() (uint64, error) { return podpathCounter(c0, maps.HookFromPod, r) }}
		t.replyPath = &pathCounter{name: "server_node_from_pod_" + reason + "_pkts", required: true,
			read: func() (uint64, error) { return podpathCounter(c1, maps.HookFromPod, r) }}
		// Every counter of both nodes: a measurement records those that rose,
		// so a packet that fell back to the stack or was dropped shows.
		t.extra = func() map[string]uint64 {
			out := map[string]uint64{}
			for i, m := range counters {
				cs, err := maps.ReadCounters(m)
				if err != nil {
					continue
				}
				for _, c := range cs {
					out[fmt.Sprintf("node%d %s/%s", i+1, c.Hook, c.Reason)] += c.Packets
				}
			}
			return out
		}
		return nil
	})
}

// reasonNamed finds the counter reason bpf/lib/reasons.h calls name (the
// names come from the programs' BTF).
func reasonNamed(name string) (maps.Reason, error) {
	for r := maps.Reason(0); r < 256; r++ {
		if r.String() == name {
			return r, nil
		}
	}
	return 0, fmt.Errorf("the datapath has no counter reason %q", name)
}

// runCrossNode builds every contender's two nodes, checks that they are
// alike where they should be, and measures them interleaved.
func (e *env) runCrossNode(ctx context.Context) error {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return fmt.Errorf("iperf3 not found (apt-get install iperf3): %w", err)
	}
	pin, err := pinnedCPUs()
	if err != nil {
		return err
	}
	load0 := loadAvg()
	var topos []*topology
	defer func() {
		for _, t := range topos {
			if err := t.close(); err != nil {
				slog.Warn("close", "contender", t.contender, "err", err)
			}
		}
	}()
	builders := []func(context.Context) (*topology, error){
		e.limitCrossTopology,
		func(ctx context.Context) (*topology, error) { return e.kernelCrossTopology(ctx, true) },
		func(ctx context.Context) (*topology, error) { return e.kernelCrossTopology(ctx, false) },
		func(ctx context.Context) (*topology, error) { return e.podpathCrossTopology(ctx, loader.RoutingDirect) },
		func(ctx context.Context) (*topology, error) { return e.podpathCrossTopology(ctx, loader.RoutingVXLAN) },
		e.floorCrossTopology,
	}
	for _, build := range builders {
		t, err := build(ctx)
		if err != nil {
			return err
		}
		topos = append(topos, t)
		t.cpus = pin
		t.info.Client, t.info.Server, t.info.Dst = t.client.IP.String(), t.server.IP.String(), t.dst.String()
		t.info.Notes = append(t.info.Notes, fmt.Sprintf("client pinned to CPU %d, server to CPU %d", pin.client, pin.server))
		t.info.Devices = deviceInfos(ctx, t.devices)
		if e.res.Topologies == nil {
			e.res.Topologies = map[string]topologyInfo{}
		}
		e.res.Topologies[famCrossNode+" "+t.contender] = t.info
		slog.Info("cross_node topology up", "contender", t.contender)
	}
	var roles []string
	for _, t := range topos {
		for _, d := range t.devices {
			if !slices.Contains(roles, d.label) {
				roles = append(roles, d.label)
			}
		}
	}
	for _, n := range fairnessOf(topos, roles) {
		e.res.Notes = append(e.res.Notes, "cross_node topologies differ: "+n)
		slog.Warn("cross_node topologies differ", "what", n)
	}

	for rep := range e.cfg.CrossNodeReps {
		for _, metric := range []string{"throughput", "rr_rate", "crr_rate"} {
			if err := e.crossNodeTurns(ctx, topos, metric, rep); err != nil {
				return err
			}
		}
	}
	e.res.Notes = append(e.res.Notes, fmt.Sprintf("cross_node: load average %s when the family started, %s when it ended", load0, loadAvg()))
	return nil
}

// crossNodeTurns measures one metric of one repetition for every contender
// in alternating turns: the rotated order, then the reverse, and so on, the
// contender's measured time split evenly over its turns. Two contenders
// measured minutes apart meet different neighbours on a shared machine;
// turns a second or two long, each contender's spread over the whole
// repetition, meet the same ones, so the ratios taken per repetition hold
// the machine's drift far less. A contender's value is its rate over all
// its turns (throughput: the mean of its turns'); latency percentiles are
// the median of its turns'. A turn that fails voids that contender's
// repetition, recorded with its evidence; the others go on.
func (e *env) crossNodeTurns(ctx context.Context, topos []*topology, metric string, rep int) error {
	type total struct {
		count, failed, retransmits int
		seconds, bits              float64
		p50s, p99s                 []float64
		ev                         evidence
		peer                       string
		before                     map[string]uint64
		err                        error
	}
	crr := metric == "crr_rate"
	turns, turn := e.cfg.CrossNodeTurns, e.cfg.RRTime/time.Duration(e.cfg.CrossNodeTurns)
	if metric == "throughput" {
		turns, turn = e.cfg.CrossNodeStreamTurns, e.cfg.StreamTime/time.Duration(e.cfg.CrossNodeStreamTurns)
		turn = max(time.Second, turn.Round(time.Second)) // iperf3 counts whole seconds
	}
	order := rotate(topos, rep)
	totals := map[*topology]*total{}
	for _, t := range order {
		totals[t] = &total{before: t.extras()}
	}
	for i := range turns {
		for j := range order {
			t := order[j]
			if i%2 == 1 {
				t = order[len(order)-1-j]
			}
			tt := totals[t]
			if tt.err != nil {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			var ev evidence
			var err error
			if metric == "throughput" {
				var r iperfResult
				ev, err = measurePath(t, func() (err error) {
					r, err = iperf(ctx, t, turn, e.cfg.StreamOmit)
					return err
				})
				tt.bits += r.bitsPerSecond * turn.Seconds()
				tt.retransmits += r.retransmits
			} else {
				var r rrResult
				ev, err = measurePath(t, func() (err error) {
					r, err = requestResponse(ctx, t, crr, e.cfg.RRWarmup/time.Duration(turns), turn)
					return err
				})
				tt.count += r.count
				tt.failed += r.failed
				tt.p50s, tt.p99s = append(tt.p50s, r.p50), append(tt.p99s, r.p99)
				tt.peer = r.peer.String()
			}
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				tt.err = fmt.Errorf("%s %s %s, turn %d of %d: %w (datapath counters that rose: %v)",
					famCrossNode, metric, t.contender, i+1, turns, err, rose(tt.before, t.extras()))
				continue
			}
			tt.seconds += turn.Seconds()
			tt.ev.add(ev)
		}
	}
	for _, t := range order {
		tt := totals[t]
		kind := strings.TrimSuffix(metric, "_rate")
		if tt.err != nil {
			if metric == "throughput" {
				e.res.recordFailure(famCrossNode, t.contender, "Gbit/s", higher, tt.err, metric)
			} else {
				e.res.recordFailure(famCrossNode, t.contender, rrUnit(crr), higher, tt.err, metric)
				e.res.recordFailure(famCrossNode, t.contender, "µs", lower, tt.err, kind+"_p50", kind+"_p99")
			}
			continue
		}
		var m *measurement
		var value string
		if metric == "throughput" {
			gbits := tt.bits / tt.seconds / 1e9
			m = e.res.record(famCrossNode, metric, t.contender, "Gbit/s", higher, gbits)
			m.addExtra("retransmits", tt.retransmits)
			value = fmt.Sprintf("%.2f Gbit/s", gbits)
		} else {
			rate := float64(tt.count) / tt.seconds
			m = e.res.record(famCrossNode, metric, t.contender, rrUnit(crr), higher, rate)
			m.addExtra("transactions", tt.count)
			if crr {
				m.addExtra("failed_connections", tt.failed)
				e.noteFailures(famCrossNode, t.contender, rep, tt.failed)
			}
			m.addExtra("server_saw_client", tt.peer)
			_, p50, _ := minMedMax(tt.p50s)
			_, p99, _ := minMedMax(tt.p99s)
			e.res.record(famCrossNode, kind+"_p50", t.contender, "µs", lower, p50)
			e.res.record(famCrossNode, kind+"_p99", t.contender, "µs", lower, p99)
			value = fmt.Sprintf("%.0f/s p99 %.0f µs", rate, p99)
		}
		m.addExtra("turns", turns)
		tt.ev.record(m, t)
		t.recordExtras(m, tt.before)
		slog.Info(famCrossNode, "rep", rep+1, "metric", metric, "contender", t.contender, "value", value)
	}
	return nil
}

// crossNodeNote says how the family measures, for the results' notes.
func crossNodeNote(c config) string {
	return fmt.Sprintf("cross_node: a pod on node 1 to a pod on node 2, each contender on its own underlay (a Linux bridge in a netns, the same addresses %s and MTU %d for all): "+
		"iperf3 as tcp_stream, TCP_RR and TCP_CRR as tcp_rr/tcp_crr, %d repetitions; in each repetition throughput, then TCP_RR, then TCP_CRR, each measured in alternating turns: every contender in the rotated order, then in the reverse, %d times for TCP_RR and TCP_CRR (a %v turn after %v of warm-up) and %d for throughput (iperf3 for %v after %v of warm-up), "+
		"a contender's value being its rate over all its turns (throughput: their mean) and its latency percentiles the median of its turns'; "+
		"client and server pinned to one CPU each, the same two for every contender; ratios are taken repetition by repetition and reported as median and 95%% confidence interval of the mean, "+
		"a target passes only when that whole interval clears it, and an interval holding 1.0 is no measurable difference; "+
		"the VXLAN contenders' pods have MTU %d (the underlay's less 50), the others' %d; podpath's from_pod forward_routed/forward_tunnel counter on both nodes, "+
		"flannel.1's transmitted packets or the FLANNEL-FWD rule on both nodes must rise, and the server must see the client pod's own address",
		xnUnderlay, mtu, c.CrossNodeReps, c.CrossNodeTurns, c.RRTime/time.Duration(c.CrossNodeTurns), c.RRWarmup/time.Duration(c.CrossNodeTurns),
		c.CrossNodeStreamTurns, max(time.Second, (c.StreamTime/time.Duration(c.CrossNodeStreamTurns)).Round(time.Second)), c.StreamOmit,
		mtu-loader.VXLANOverhead, mtu)
}

// crossNodeGoals: direct routing within 5% of the limit, and the overlay
// 1.2x Flannel's VXLAN on request/response; each judged on the ratio's
// whole 95% interval of the paired ratio.
var crossNodeGoals = []struct {
	num, den, metric string
	atLeast          float64
}{
	{cPodpathDirect, cLimit, "throughput", 0.95},
	{cPodpathDirect, cLimit, "rr_rate", 0.95},
	{cPodpathDirect, cLimit, "crr_rate", 0.95},
	{cPodpathVXLAN, cFlannelVXLAN, "rr_rate", 1.2},
	{cPodpathVXLAN, cFlannelVXLAN, "crr_rate", 1.2},
}

// crossNodeRatios are the paired ratios the summary shows.
var crossNodeRatios = [][2]string{
	{cPodpathDirect, cLimit}, {cPodpathDirect, cHostGW}, {cPodpathVXLAN, cFlannelVXLAN}, {cPodpathVXLAN, cLimit},
	{cPodpathVXLAN, cPodpathDirect}, {cHostGW, cLimit}, {cFlannelVXLAN, cLimit},
	{cPodpathDirect, cVethFloor}, {cVethFloor, cLimit}, {cVethFloor, cFlannelVXLAN},
}

var crossNodeMetricLabels = map[string]string{"throughput": "TCP throughput", "rr_rate": "TCP_RR rate", "crr_rate": "TCP_CRR rate"}

func crossNodeTargets(r *results) {
	for _, g := range crossNodeGoals {
		num, den := r.find(famCrossNode, g.metric, g.num), r.find(famCrossNode, g.metric, g.den)
		p, ok := paired(num, den)
		if !ok {
			continue
		}
		r.Targets = append(r.Targets, target{
			Name:  fmt.Sprintf("cross_node: %s, %s vs %s", crossNodeMetricLabels[g.metric], g.num, g.den),
			Ratio: round3(p.Median), Want: fmt.Sprintf(">= %.2fx (whole 95%% interval)", g.atLeast), Pass: p.Lo >= g.atLeast, Paired: &p,
			Detail: pairedDetail(p, num, den),
		})
	}
}

// crossNodePresent are the contenders the results hold, in table order.
func crossNodePresent(r *results) []string {
	var out []string
	for _, c := range crossNodeContenders {
		if slices.ContainsFunc(r.Measurements, func(m *measurement) bool { return m.Family == famCrossNode && m.Contender == c }) {
			out = append(out, c)
		}
	}
	return out
}

// crossNodeSummary: each contender's medians side by side, then the paired
// ratios.
func crossNodeSummary(r *results) string {
	var b strings.Builder
	present := crossNodePresent(r)
	reps := r.Config.CrossNodeReps
	fmt.Fprintf(&b, "A pod on node 1 to a pod on node 2 over a shared underlay. Median (min-max) over %d repetitions; in each, every contender in alternating turns (the rotated order, then the reverse), client and server pinned to one CPU each.\n\n", reps)
	b.WriteString("| metric | unit |")
	for _, c := range present {
		b.WriteString(" " + c + " |")
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---|", len(present)) + "\n")
	b.WriteString("| pod MTU | bytes |")
	for _, c := range present {
		if d, ok := r.Topologies[famCrossNode+" "+c].Devices["client eth0"]; ok {
			fmt.Fprintf(&b, " %d |", d.MTU)
		} else {
			b.WriteString(" - |")
		}
	}
	b.WriteString("\n")
	for _, metric := range uniq(r.family(famCrossNode), func(m *measurement) string { return m.Metric }) {
		var unit string
		var cells []string
		for _, c := range present {
			m := r.find(famCrossNode, metric, c)
			if m == nil {
				cells = append(cells, "-")
				continue
			}
			unit = m.Unit
			cells = append(cells, fmt.Sprintf("%s (%s-%s)", formatValue(m.Median), formatValue(m.Min), formatValue(m.Max)))
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", metric, unit, strings.Join(cells, " | "))
	}
	b.WriteString("\nRatios taken repetition by repetition: median (95% confidence interval of the mean); an interval that holds 1.0 is no measurable difference.\n\n")
	b.WriteString("| ratio | TCP throughput | TCP_RR rate | TCP_CRR rate |\n|---|---|---|---|\n")
	for _, pair := range crossNodeRatios {
		fmt.Fprintf(&b, "| %s / %s |", pair[0], pair[1])
		for _, metric := range []string{"throughput", "rr_rate", "crr_rate"} {
			num, den := r.find(famCrossNode, metric, pair[0]), r.find(famCrossNode, metric, pair[1])
			p, ok := paired(num, den)
			if !ok {
				b.WriteString(" - |")
				continue
			}
			fmt.Fprintf(&b, " %.3fx (%.3f-%.3f) %s |", p.Median, p.Lo, p.Hi, p.verdict(num.Better))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	return b.String()
}

// crossNodePanels: throughput, TCP_RR and TCP_CRR rates, each bar labelled
// with its paired median ratio to the limit (podpath-vxlan: to Flannel's
// VXLAN, the target's reference), then the latencies.
func crossNodePanels(r *results) []panel {
	present := crossNodePresent(r)
	if len(present) == 0 {
		return nil
	}
	get := func(g, s string) *measurement { return r.find(famCrossNode, g, s) }
	ratio := func(g, s string) string {
		ref := cLimit
		if s == cPodpathVXLAN {
			ref = cFlannelVXLAN
		}
		p, ok := paired(get(g, s), get(g, ref))
		if s == cLimit || !ok {
			return ""
		}
		return fmt.Sprintf("%.2fx %s", p.Median, ref)
	}
	return []panel{
		{title: "throughput (higher is better)", unit: "Gbit/s", groups: []string{"throughput"}, series: present, get: get, ratio: ratio},
		{title: "TCP_RR (higher is better)", unit: "transactions/s", groups: []string{"rr_rate"}, series: present, get: get, ratio: ratio},
		{title: "TCP_CRR (higher is better)", unit: "connections/s", groups: []string{"crr_rate"}, series: present, get: get, ratio: ratio},
		{title: "latency (lower is better)", unit: "µs", groups: []string{"rr_p50", "rr_p99", "crr_p50", "crr_p99"}, series: present, get: get},
	}
}
