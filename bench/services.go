package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The services family: a client pod reaches a ClusterIP whose one backend
// is a server pod on the same node, with N services programmed. Two
// services are measured in each topology: one programmed last (for
// iptables: the last rule of KUBE-SERVICES, the longest walk) and, with
// three or more, one in the middle (the typical walk). podpath programs
// them with services.Manager.Apply; the kube-proxy contenders are Docker's
// bridge with the rules kube-proxy writes for the same services, in its
// iptables mode and in its nftables mode. Every (contender, N) is its own
// topology, all built first and then measured interleaved, so the rate at
// 100,000 services and at one are compared within the same minutes.

// cIptables is the iptables contender of the services and snat families;
// cNftables kube-proxy's nftables mode in the services family.
const (
	cIptables = "iptables"
	cNftables = "nftables"
)

// The measured service, and the shape of the others.
var (
	measuredVIP    = netip.MustParseAddr("10.111.0.10")
	measuredMidVIP = netip.MustParseAddr("10.111.0.11")
	// kpServiceCIDR is the cluster's service range for kube-proxy's
	// nftables rules (kubeadm's default): every ClusterIP here is in it.
	kpServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")
	// Filler i has ClusterIP fillerVIPBase+1+i and two backends from
	// fillerBackendBase on, pods of other nodes that are never reached.
	fillerVIPBase     = netip.MustParseAddr("10.96.0.0")
	fillerBackendBase = netip.MustParseAddr("10.128.0.0")
)

const (
	svcNamespace    = "bench"
	measuredName    = "measured"
	svcPort         = 80
	svcTargetPort   = 8080
	fillerBackends  = 2
	svcPodCIDR      = "10.244.0.0/16"
	kpClusterCIDR   = "172.17.0.0/16"
	measuredSvcName = svcNamespace + "/" + measuredName
	measuredMidName = "measured-mid"
)

// svcPosition is where a measured service is among those programmed:
// its metrics are rr_rate<suffix>@N and crr_rate<suffix>@N.
type svcPosition struct {
	suffix, label, name string
	vip                 netip.Addr
}

var (
	posLast = svcPosition{suffix: "", label: "last", name: measuredName, vip: measuredVIP}
	posMid  = svcPosition{suffix: "_mid", label: "middle", name: measuredMidName, vip: measuredMidVIP}
)

// svcPositions are the positions measured with n services.
func svcPositions(n int) []svcPosition {
	if n >= 3 {
		return []svcPosition{posLast, posMid}
	}
	return []svcPosition{posLast}
}

// svcDef is one service of a topology: a ClusterIP on port svcPort to
// its endpoints on svcTargetPort.
type svcDef struct {
	name      string
	vip       netip.Addr
	endpoints []netip.Addr
}

// benchServices are a topology's n services in programming order:
// fillers, each with fillerBackends endpoints (pods of other nodes that
// are never reached); with three or more, measured-mid at index n/2; and
// measured last. Both measured ones have backend as their only endpoint.
func benchServices(n int, backend netip.Addr) []svcDef {
	out := make([]svcDef, 0, n)
	f := 0
	for i := range n {
		switch {
		case i == n-1:
			out = append(out, svcDef{measuredName, measuredVIP, []netip.Addr{backend}})
		case n >= 3 && i == n/2:
			out = append(out, svcDef{measuredMidName, measuredMidVIP, []netip.Addr{backend}})
		default:
			out = append(out, svcDef{fillerName(f), addrAdd(fillerVIPBase, uint32(f+1)), fillerEndpoints(f)})
			f++
		}
	}
	return out
}

// The kube-proxy contender uses the legacy iptables backend: with
// iptables-nft 1.8.9 the `iptables-restore --noflush` kube-proxy runs took
// about a minute for 10,000 services here and grows with the square of the
// rule count, so 100,000 could not be programmed at all.
const (
	kpRestore  = "iptables-legacy-restore"
	kpIptables = "iptables-legacy"
)

func addrAdd(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func fillerName(i int) string { return fmt.Sprintf("filler-%06d", i) }

func fillerEndpoints(i int) []netip.Addr {
	out := make([]netip.Addr, fillerBackends)
	for j := range out {
		out[j] = addrAdd(fillerBackendBase, uint32(fillerBackends*i+j+1))
	}
	return out
}

// podpathServices is benchServices for services.Manager.
func podpathServices(n int, backend netip.Addr) []services.Service {
	defs := benchServices(n, backend)
	out := make([]services.Service, len(defs))
	for i, d := range defs {
		out[i] = services.Service{Namespace: svcNamespace, Name: d.name, ClusterIP: d.vip,
			Ports: []services.Port{{Name: "http", Port: svcPort, TargetPort: svcTargetPort}}}
		for _, ep := range d.endpoints {
			out[i].Backends = append(out[i].Backends, services.Backend{IP: ep, Ready: true})
		}
	}
	return out
}

// kubeProxyServices is benchServices as kube-proxy sees them.
func kubeProxyServices(n int, backend netip.Addr) []kpService {
	defs := benchServices(n, backend)
	out := make([]kpService, len(defs))
	for i, d := range defs {
		out[i] = kpService{namespace: svcNamespace, name: d.name, portLabel: "http",
			clusterIP: d.vip, port: svcPort, targetPort: svcTargetPort, endpoints: d.endpoints}
	}
	return out
}

// kubeProxyNFTNode is the bench's kube-proxy node for the nftables rules:
// Docker's bridge address as the node's, kpClusterCIDR, kpServiceCIDR.
func kubeProxyNFTNode() kpnNode {
	return kpnNode{name: "bench-node", address: netip.MustParseAddr("172.17.0.1"),
		clusterCIDR: netip.MustParsePrefix(kpClusterCIDR), serviceCIDRs: []netip.Prefix{kpServiceCIDR}}
}

// podpathSizes sizes a node's service maps for n services.
func podpathSizes(n int) func(*loader.Config) {
	return func(c *loader.Config) {
		c.MaxServices = uint32(2*n + 16)
		c.MaxBackends = uint32(fillerBackends*n + 16)
	}
}

// svcTopology is one contender with N services programmed.
type svcTopology struct {
	// at is the topology towards each measured service, by position:
	// the same pods, the client sending to that service's ClusterIP.
	at        map[svcPosition]*topology
	contender string
	n         int
	// programmed is how long programming all n services took.
	programmed time.Duration
	// flows, if set, reads how many conntrack entries a measured service
	// has (podpath), as evidence the service path was taken.
	flows func(name string) (int, error)
	// reset, if set, runs before each measurement (clears what the path
	// counter counts).
	reset func(svcPosition) error
	close func() error
	// last is at[posLast], for what all positions share (pods, devices).
	last *topology
}

// newSvcTopology is t's topology to each measured service of n, path
// giving each its path counter.
func newSvcTopology(t *topology, n int, path func(svcPosition) *pathCounter) *svcTopology {
	st := &svcTopology{at: map[svcPosition]*topology{}, contender: t.contender, n: n, close: t.close, last: t}
	for _, pos := range svcPositions(n) {
		c := *t
		c.dst, c.dstPort, c.listenPort, c.wantPeer = pos.vip, svcPort, svcTargetPort, t.client.IP
		c.connectFailuresOK = true
		c.path = path(pos)
		st.at[pos] = &c
	}
	return st
}

// podpathServiceTopology is a sim node with two pods and n services.
func (e *env) podpathServiceTopology(ctx context.Context, n int) (_ *svcTopology, err error) {
	bin, err := e.podpathCNI()
	if err != nil {
		return nil, err
	}
	node, closeNode, err := newSimNode(fmt.Sprintf("svc%d", n), netip.MustParsePrefix(svcPodCIDR),
		sim.WithCNIBin(bin), sim.WithMTU(mtu), sim.WithLoaderConfig(podpathSizes(n)))
	if err != nil {
		return nil, err
	}
	closers := []func() error{closeNode}
	t := &topology{contender: cPodpath}
	defer func() {
		if err != nil {
			closeAll(closers)
		}
	}()
	pods := []*endpoint{&t.client, &t.server}
	for i, role := range []string{"client", "server"} {
		p, err := node.AddPod(ctx, role)
		if err != nil {
			return nil, err
		}
		*pods[i] = endpoint{Name: fmt.Sprintf("podpath-svc%d-%s", n, role), NS: p.NS, IP: p.IP}
		t.devices = append(t.devices, nsDevice{role + " eth0", p.NS, sim.IfName})
	}
	m, err := services.Open(node.PinRoot, node.StateDir)
	if err != nil {
		return nil, err
	}
	closers = append(closers, m.Close)
	svcs := podpathServices(n, t.server.IP)
	t0 := time.Now()
	if _, err := m.Apply(ctx, svcs); err != nil {
		return nil, fmt.Errorf("apply %d services: %w", n, err)
	}
	programmed := time.Since(t0)
	counters, err := maps.OpenPinned(node.PinRoot, maps.MapCounters)
	if err != nil {
		return nil, err
	}
	closers = append(closers, counters.Close)
	t.close = closeAllFn(closers...)
	st := newSvcTopology(t, n, func(svcPosition) *pathCounter {
		return &pathCounter{name: "from_pod_forward_local_pkts", required: true,
			read: func() (uint64, error) { return podpathCounter(counters, maps.HookFromPod, maps.ReasonForwardLocal) }}
	})
	st.programmed = programmed
	st.flows = func(name string) (int, error) {
		fs, err := m.Conntrack().List(services.FlowFilter{Service: svcNamespace + "/" + name})
		return len(fs), err
	}
	return st, nil
}

// podpathCounter is the packet count of one (hook, reason) counter.
func podpathCounter(counters *ebpf.Map, hook maps.Hook, reason maps.Reason) (uint64, error) {
	cs, err := maps.ReadCounters(counters)
	if err != nil {
		return 0, err
	}
	for _, c := range cs {
		if c.Hook == hook && c.Reason == reason {
			return c.Packets, nil
		}
	}
	return 0, nil
}

// kubeProxyTopology is Docker's bridge with two pods, Docker's rules, and
// kube-proxy's rules for n services in its iptables mode (contender
// cIptables) or its nftables mode (cNftables), loaded as kube-proxy loads
// them.
func (e *env) kubeProxyTopology(ctx context.Context, n int, contender string) (_ *svcTopology, err error) {
	var closers []func() error
	t := &topology{contender: contender, close: func() error { return closeAll(closers) }}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	label := "kp"
	if contender == cNftables {
		label = "kpn"
	}
	br, err := newBridgeNode(e, fmt.Sprintf("%s%d", label, n), []string{"client", "server"}, &closers)
	if err != nil {
		return nil, err
	}
	t.client, t.server, t.devices = br.pods[0], br.pods[1], br.devices
	svcs := kubeProxyServices(n, t.server.IP)
	var tool string
	var args []string
	var rules string
	if contender == cNftables {
		if _, err := runIn(ctx, br.node, dockerRules, kpRestore); err != nil {
			return nil, fmt.Errorf("load Docker's rules: %w", err)
		}
		server := t.server.IP
		rules = kubeProxyNFTRules(svcs, kubeProxyNFTNode(), func(a netip.Addr) bool { return a == server })
		tool, args = "nft", []string{"-f", "-"}
	} else {
		if err := kubeProxyStart(ctx, br.node); err != nil {
			return nil, err
		}
		rules = kubeProxyRules(svcs, netip.MustParsePrefix(kpClusterCIDR))
		tool, args = kpRestore, []string{"--noflush", "--counters"}
	}
	programmed, err := e.timedLoad(ctx, br.node, rules, tool, args...)
	if err != nil {
		return nil, fmt.Errorf("load kube-proxy's rules for %d services: %w", n, err)
	}
	node := br.node
	var st *svcTopology
	if contender == cNftables {
		// kube-proxy's nftables rules count nothing: the evidence is the
		// kernel's connection tracking, cleared before each measurement,
		// holding connections to the ClusterIP translated to the server.
		st = newSvcTopology(t, n, func(pos svcPosition) *pathCounter {
			return &pathCounter{name: "conntrack_dnat_flows", required: true,
				read: func() (uint64, error) { return dnatFlows(node, pos.vip, t.server.IP, false) }}
		})
		st.reset = func(pos svcPosition) error {
			_, err := dnatFlows(node, pos.vip, t.server.IP, true)
			return err
		}
	} else {
		st = newSvcTopology(t, n, func(pos svcPosition) *pathCounter {
			var sep string
			for _, s := range svcs {
				if s.name == pos.name {
					sep = s.sepChain(t.server.IP)
				}
			}
			return &pathCounter{name: "kube_sep_dnat_pkts", required: true,
				read: func() (uint64, error) { return chainRuleCounter(ctx, node, kpIptables, "nat", sep, "DNAT") }}
		})
	}
	st.programmed = programmed
	return st, nil
}

// dnatFlows counts (or, with del, deletes) the TCP connections in node's
// connection tracking from a client to vip:svcPort that were translated
// to backend:svcTargetPort.
func dnatFlows(node ns.NetNS, vip, backend netip.Addr, del bool) (uint64, error) {
	var n uint64
	err := node.Do(func(ns.NetNS) error {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			return fmt.Errorf("list conntrack: %w", err)
		}
		var match []*netlink.ConntrackFlow
		for _, f := range flows {
			if f.Forward.Protocol == unix.IPPROTO_TCP && f.Forward.DstIP.Equal(vip.AsSlice()) && f.Forward.DstPort == svcPort &&
				f.Reverse.SrcIP.Equal(backend.AsSlice()) && f.Reverse.SrcPort == svcTargetPort {
				match = append(match, f)
			}
		}
		n = uint64(len(match))
		if del && len(match) > 0 {
			filter := &netlink.ConntrackFilter{}
			if err := filter.AddIP(netlink.ConntrackOrigDstIP, vip.AsSlice()); err != nil {
				return err
			}
			if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filter); err != nil {
				return fmt.Errorf("delete conntrack entries: %w", err)
			}
		}
		return nil
	})
	return n, err
}

var errTooSlow = errors.New("too slow")

// foreseen extrapolates the time to program n services from two earlier
// (count, seconds) pairs with the power law through them; ok is false
// without two usable pairs.
func foreseen(pairs [][2]float64, n int) (time.Duration, bool) {
	if len(pairs) < 2 {
		return 0, false
	}
	a, b := pairs[0], pairs[1]
	if a[0] <= 0 || b[0] <= a[0] || a[1] <= 0 || b[1] <= 0 || float64(n) <= b[0] {
		return 0, false
	}
	exp := math.Log(b[1]/a[1]) / math.Log(b[0]/a[0])
	return secsDuration(b[1] * math.Pow(float64(n)/b[0], max(exp, 1))), true
}

func secsDuration(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// kubeProxyStart loads Docker's rules and kube-proxy's start-up chains and
// jumps into a node namespace, with the kube-proxy contender's backend.
func kubeProxyStart(ctx context.Context, n ns.NetNS) error {
	if _, err := runIn(ctx, n, dockerRules, kpRestore); err != nil {
		return fmt.Errorf("load Docker's rules: %w", err)
	}
	if _, err := runIn(ctx, n, kubeProxyStartup(), kpRestore, "--noflush"); err != nil {
		return fmt.Errorf("load kube-proxy's start-up rules: %w", err)
	}
	return nil
}

// chainRuleCounter is the packet count of the first rule of a chain whose
// target is target, from `iptables -L chain -v -x -n`.
func chainRuleCounter(ctx context.Context, n ns.NetNS, iptables, table, chain, target string) (uint64, error) {
	out, err := runIn(ctx, n, "", iptables, "-w", "-t", table, "-L", chain, "-v", "-x", "-n")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == target {
			return strconv.ParseUint(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s rule in %s %s", target, table, chain)
}

// runServices builds every (contender, N) topology, times programming
// 10,000 services into an empty node, then measures TCP_RR and TCP_CRR
// through the measured ClusterIPs on all topologies, interleaved.
func (e *env) runServices(ctx context.Context) error {
	for _, tool := range []string{kpRestore, "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install iptables nftables): %w", tool, err)
		}
	}
	if err := e.programTime(ctx); err != nil {
		return err
	}
	pin, err := pinnedCPUs()
	if err != nil {
		return err
	}
	var topos []*svcTopology
	defer func() {
		for _, t := range topos {
			if err := t.close(); err != nil {
				slog.Warn("close", "contender", t.contender, "services", t.n, "err", err)
			}
		}
	}()
	builders := []struct {
		contender string
		build     func(context.Context, int) (*svcTopology, error)
	}{
		{cPodpath, e.podpathServiceTopology},
		{cIptables, func(ctx context.Context, n int) (*svcTopology, error) { return e.kubeProxyTopology(ctx, n, cIptables) }},
		{cNftables, func(ctx context.Context, n int) (*svcTopology, error) { return e.kubeProxyTopology(ctx, n, cNftables) }},
	}
	// Each contender's last two programming times, to foresee one that
	// would outlast the restore limit instead of waiting it out.
	took := map[string][][2]float64{}
	for _, n := range e.cfg.SvcCounts {
		for _, b := range builders {
			if d, ok := foreseen(took[b.contender], n); ok && d > e.cfg.RestoreLimit {
				note := fmt.Sprintf("services: %s with %d services not measured: programming them would take about %v, past the %v limit "+
					"(grown from %v at %d to %v at %d services in this run)", b.contender, n, d.Round(time.Minute), e.cfg.RestoreLimit,
					secsDuration(took[b.contender][0][1]), int(took[b.contender][0][0]), secsDuration(took[b.contender][1][1]), int(took[b.contender][1][0]))
				e.res.Notes = append(e.res.Notes, note)
				slog.Warn(note)
				continue
			}
			t, err := b.build(ctx, n)
			if errors.Is(err, errTooSlow) {
				e.res.Notes = append(e.res.Notes, "services: "+err.Error()+": not measured")
				slog.Warn("services: skipped", "services", n, "err", err)
				continue
			}
			if err != nil {
				return fmt.Errorf("%d services: %w", n, err)
			}
			topos = append(topos, t)
			took[b.contender] = append(took[b.contender], [2]float64{float64(n), t.programmed.Seconds()})
			if l := len(took[b.contender]); l > 2 {
				took[b.contender] = took[b.contender][l-2:]
			}
			t.last.info.Devices = deviceInfos(ctx, t.last.devices)
			for _, at := range t.at {
				at.cpus = pin
				at.info.Devices = t.last.info.Devices
			}
			m := e.res.record(famServices, fmt.Sprintf("program_all@%d", n), t.contender, "s", lower, t.programmed.Seconds())
			m.addExtra("services", n)
			slog.Info("services topology up", "contender", t.contender, "services", n, "programmed_in", t.programmed.Round(time.Millisecond))
		}
	}
	var plain []*topology
	for _, t := range topos {
		plain = append(plain, t.last)
	}
	for _, n := range fairness(plain) {
		e.res.Notes = append(e.res.Notes, "services topologies differ: "+n)
	}
	e.describeServiceTopologies(topos)

	// One round: every topology and position, TCP_RR then TCP_CRR.
	type turn struct {
		t   *svcTopology
		pos svcPosition
	}
	var turns []turn
	for _, t := range topos {
		for _, pos := range svcPositions(t.n) {
			turns = append(turns, turn{t, pos})
		}
	}
	for rep := range e.cfg.SvcReps {
		for _, tn := range rotate(turns, rep) {
			for _, crr := range []bool{false, true} {
				if err := e.measureService(ctx, tn.t, tn.pos, crr, rep); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// measureService runs one TCP_RR or TCP_CRR through the ClusterIP of the
// service measured at pos.
func (e *env) measureService(ctx context.Context, st *svcTopology, pos svcPosition, crr bool, rep int) error {
	kind, unit := "rr", "transactions/s"
	if crr {
		kind, unit = "crr", "connections/s"
	}
	t := st.at[pos]
	metric := fmt.Sprintf("%s_rate%s@%d", kind, pos.suffix, st.n)
	if st.reset != nil {
		if err := st.reset(pos); err != nil {
			return fmt.Errorf("services %s %s %d: %w", kind, st.contender, st.n, err)
		}
	}
	var r rrResult
	ev, err := measurePath(t, func() (err error) {
		r, err = requestResponse(ctx, t, crr, e.cfg.SvcWarmup, e.cfg.SvcTime)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e.res.recordFailure(famServices, st.contender, unit, higher,
			fmt.Errorf("services %s %s %d (%s): %w", kind, st.contender, st.n, pos.label, err), metric)
		return nil
	}
	m := e.res.record(famServices, metric, st.contender, unit, higher, r.rate)
	m.addExtra("services", st.n)
	m.addExtra("position", pos.label)
	m.addExtra("transactions", r.count)
	m.addExtra("p50_us", round3(r.p50))
	m.addExtra("p99_us", round3(r.p99))
	m.addExtra("server_saw_client", r.peer.String())
	if crr {
		m.addExtra("failed_connections", r.failed)
		e.noteFailures(famServices, fmt.Sprintf("%s with %s (%s)", st.contender, servicesLabel(st.n), pos.label), rep, r.failed)
	}
	ev.record(m, t)
	if st.flows != nil {
		flows, err := st.flows(pos.name)
		if err != nil {
			return fmt.Errorf("services %s podpath %d: conntrack: %w", kind, st.n, err)
		}
		if flows == 0 {
			return fmt.Errorf("services %s podpath %d: no conntrack entry for %s/%s: the traffic did not take the service path", kind, st.n, svcNamespace, pos.name)
		}
		m.addExtra("conntrack_entries_of_service", flows)
	}
	slog.Info("services", "rep", rep+1, "kind", kind, "contender", st.contender, "services", st.n, "position", pos.label,
		"rate", fmt.Sprintf("%.0f", r.rate), "p50_us", fmt.Sprintf("%.1f", r.p50))
	return nil
}

// programTime times programming SvcProgramN services into a node that has
// none: podpath's Apply, and kube-proxy's iptables-restore into a fresh
// node namespace holding Docker's rules and kube-proxy's start-up rules.
// A service's backend is a pod that does not exist; nothing is sent.
func (e *env) programTime(ctx context.Context) error {
	n := e.cfg.SvcProgramN
	metric := fmt.Sprintf("program@%d", n)
	backend := netip.MustParseAddr("10.244.0.200")
	node, closeNode, err := newSimNode("svcprog", netip.MustParsePrefix(svcPodCIDR), sim.WithMTU(mtu), sim.WithLoaderConfig(podpathSizes(n)))
	if err != nil {
		return err
	}
	defer closeNode()
	m, err := services.Open(node.PinRoot, node.StateDir)
	if err != nil {
		return err
	}
	defer m.Close()
	// A fresh node's first update re-synchronises every map; time the
	// ordinary updates after it, as a running node makes them.
	if _, err := m.Apply(ctx, nil); err != nil {
		return err
	}
	svcs := podpathServices(n, backend)
	kp := kubeProxyServices(n, backend)
	rules := kubeProxyRules(kp, netip.MustParsePrefix(kpClusterCIDR))
	nftRules := kubeProxyNFTRules(kp, kubeProxyNFTNode(), func(a netip.Addr) bool { return a == backend })

	programs := map[string]func() (time.Duration, error){
		cPodpath: func() (time.Duration, error) {
			t0 := time.Now()
			sum, err := m.Apply(ctx, svcs)
			d := time.Since(t0)
			if err != nil {
				return 0, err
			}
			if len(sum.Added) != n {
				return 0, fmt.Errorf("apply added %d services, want %d", len(sum.Added), n)
			}
			_, err = m.Apply(ctx, nil)
			return d, err
		},
		cIptables: func() (time.Duration, error) { return e.restoreInto(ctx, "kpprog", kpRestore, rules) },
		cNftables: func() (time.Duration, error) { return e.nftInto(ctx, "kpnprog", nftRules) },
	}
	for rep := range e.cfg.SvcProgReps {
		for _, c := range rotate([]string{cPodpath, cIptables, cNftables}, rep) {
			d, err := programs[c]()
			if err != nil {
				return fmt.Errorf("program %d services, %s: %w", n, c, err)
			}
			mm := e.res.record(famServices, metric, c, "s", lower, d.Seconds())
			mm.addExtra("services", n)
			slog.Info("services: program", "contender", c, "services", n, "took", d.Round(time.Millisecond))
		}
	}
	if e.cfg.NftProgram {
		// The same restore with the nf_tables backend, once, for the record.
		d, err := e.restoreInto(ctx, "kpnft", "iptables-nft-restore", rules)
		if err != nil {
			e.res.Notes = append(e.res.Notes, fmt.Sprintf("services: iptables-nft-restore of %d services: %v", n, err))
		} else {
			mm := e.res.record(famServices, metric, cIptables+"-nft", "s", lower, d.Seconds())
			mm.addExtra("services", n)
			slog.Info("services: program", "contender", cIptables+"-nft", "services", n, "took", d.Round(time.Millisecond))
		}
	}
	return nil
}

// restoreInto times `restore --noflush --counters` of rules into a fresh
// namespace prepared as a kube-proxy node is before its first sync.
func (e *env) restoreInto(ctx context.Context, label, restore, rules string) (time.Duration, error) {
	n, rm, err := newNS(label)
	if err != nil {
		return 0, err
	}
	defer rm()
	if _, err := runIn(ctx, n, dockerRules, restore); err != nil {
		return 0, fmt.Errorf("load Docker's rules: %w", err)
	}
	if _, err := runIn(ctx, n, kubeProxyStartup(), restore, "--noflush"); err != nil {
		return 0, fmt.Errorf("load kube-proxy's start-up rules: %w", err)
	}
	return e.timedLoad(ctx, n, rules, restore, "--noflush", "--counters")
}

// nftInto times `nft -f -` of rules (kube-proxy's first sync) into a
// fresh namespace holding Docker's rules, as a kube-proxy node starting in
// nftables mode.
func (e *env) nftInto(ctx context.Context, label, rules string) (time.Duration, error) {
	n, rm, err := newNS(label)
	if err != nil {
		return 0, err
	}
	defer rm()
	if _, err := runIn(ctx, n, dockerRules, kpRestore); err != nil {
		return 0, fmt.Errorf("load Docker's rules: %w", err)
	}
	return e.timedLoad(ctx, n, rules, "nft", "-f", "-")
}

// timedLoad times tool reading rules on its standard input in n; past
// RestoreLimit it is stopped and the error is errTooSlow.
func (e *env) timedLoad(ctx context.Context, n ns.NetNS, rules, tool string, args ...string) (time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, e.cfg.RestoreLimit)
	defer cancel()
	t0 := time.Now()
	if _, err := runIn(rctx, n, rules, tool, args...); err != nil {
		if rctx.Err() != nil && ctx.Err() == nil {
			return 0, fmt.Errorf("%w: %s took longer than %v", errTooSlow, tool, e.cfg.RestoreLimit)
		}
		return 0, err
	}
	return time.Since(t0), nil
}

// describeServiceTopologies writes what each contender's topologies are.
func (e *env) describeServiceTopologies(topos []*svcTopology) {
	if e.res.Topologies == nil {
		e.res.Topologies = map[string]topologyInfo{}
	}
	for _, st := range topos {
		t := st.last
		info := topologyInfo{Client: t.client.IP.String(), Server: t.server.IP.String(),
			Dst: fmt.Sprintf("%s:%d", measuredVIP, svcPort), Devices: t.info.Devices}
		mid := ""
		if len(svcPositions(st.n)) > 1 {
			mid = fmt.Sprintf(", %s/%s (%s) at position %d", svcNamespace, measuredMidName, measuredMidVIP, st.n/2+1)
		}
		switch st.contender {
		case cPodpath:
			info.Description = fmt.Sprintf("podpath: sim node, two pods by podpath-cni, %d ClusterIP services applied with services.Manager "+
				"(fillers with %d backends on other nodes; the measured ones -> server:%d: %s last%s); from_pod translates and redirects with bpf_redirect_peer",
				st.n, fillerBackends, svcTargetPort, measuredSvcName, mid)
		case cNftables:
			info.Description = fmt.Sprintf("Docker's bridge (docker0, br_netfilter, ip_forward=1, Docker's rules) plus kube-proxy's nftables-mode "+
				"table for %d ClusterIP services (fillers with %d endpoints; %s last%s): the services chain's verdict map to a service chain "+
				"that DNATs, loaded with one `nft -f -` as kube-proxy's first sync", st.n, fillerBackends, measuredSvcName, mid)
		default:
			info.Description = fmt.Sprintf("Docker's bridge (docker0, br_netfilter, ip_forward=1, Docker's rules) plus kube-proxy's iptables-mode "+
				"rules for %d ClusterIP services (fillers with %d endpoints; %s last in KUBE-SERVICES%s), "+
				"loaded with one `%s --noflush --counters` as kube-proxy does", st.n, fillerBackends, measuredSvcName, mid, kpRestore)
		}
		info.Notes = append(info.Notes, fmt.Sprintf("programming all %d services took %v", st.n, st.programmed.Round(time.Millisecond)))
		e.res.Topologies[fmt.Sprintf("%s %s %d", famServices, st.contender, st.n)] = info
	}
}

// serviceCounts are the service counts measured, ascending.
func serviceCounts(r *results) []int {
	var out []int
	for _, m := range r.Measurements {
		if m.Family != famServices {
			continue
		}
		if _, n, ok := splitCount(m.Metric); ok && !slices.Contains(out, n) && !strings.HasPrefix(m.Metric, "program@") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// splitCount splits "rr_rate@1000" into "rr_rate" and 1000.
func splitCount(metric string) (string, int, bool) {
	name, num, ok := strings.Cut(metric, "@")
	if !ok {
		return metric, 0, false
	}
	n, err := strconv.Atoi(num)
	return name, n, err == nil
}

// noteFailures puts connections that could not be set up in the notes.
func (e *env) noteFailures(fam, who string, rep, failed int) {
	if failed == 0 {
		return
	}
	e.res.Notes = append(e.res.Notes, fmt.Sprintf("%s: %s, repetition %d: %d TCP_CRR connections could not be set up or answered within %v (counted in the rate, not in the latencies)",
		fam, who, rep+1, failed, ioTimeout))
}
