package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
)

// The services family: a client pod reaches a ClusterIP whose one backend
// is a server pod on the same node, with N services programmed and the
// measured one the last of them (for iptables: the last rule of
// KUBE-SERVICES, the longest walk). podpath programs them with
// services.Manager.Apply; the iptables contender is Docker's bridge with
// the rules kube-proxy's iptables mode writes for the same services. Every
// (contender, N) is its own topology, all built first and then measured
// interleaved, so the rate at 100,000 services and at one are compared
// within the same minutes.

// cIptables is the iptables contender of the services and snat families.
const cIptables = "iptables"

// The measured service, and the shape of the others.
var (
	measuredVIP = netip.MustParseAddr("10.111.0.10")
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
)

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

// podpathServices is n services for services.Manager: n-1 fillers, then
// the measured one with backend as its only backend.
func podpathServices(n int, backend netip.Addr) []services.Service {
	out := make([]services.Service, 0, n)
	for i := range n - 1 {
		s := services.Service{Namespace: svcNamespace, Name: fillerName(i), ClusterIP: addrAdd(fillerVIPBase, uint32(i+1)),
			Ports: []services.Port{{Name: "http", Port: svcPort, TargetPort: svcTargetPort}}}
		for _, ep := range fillerEndpoints(i) {
			s.Backends = append(s.Backends, services.Backend{IP: ep, Ready: true})
		}
		out = append(out, s)
	}
	return append(out, services.Service{Namespace: svcNamespace, Name: measuredName, ClusterIP: measuredVIP,
		Ports:    []services.Port{{Name: "http", Port: svcPort, TargetPort: svcTargetPort}},
		Backends: []services.Backend{{IP: backend, Ready: true}}})
}

// kubeProxyServices is the same n services as kube-proxy sees them.
func kubeProxyServices(n int, backend netip.Addr) []kpService {
	out := make([]kpService, 0, n)
	for i := range n - 1 {
		out = append(out, kpService{namespace: svcNamespace, name: fillerName(i), portLabel: "http",
			clusterIP: addrAdd(fillerVIPBase, uint32(i+1)), port: svcPort, targetPort: svcTargetPort, endpoints: fillerEndpoints(i)})
	}
	return append(out, kpService{namespace: svcNamespace, name: measuredName, portLabel: "http",
		clusterIP: measuredVIP, port: svcPort, targetPort: svcTargetPort, endpoints: []netip.Addr{backend}})
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
	*topology
	n int
	// programmed is how long programming all n services took.
	programmed time.Duration
	// flows, if set, reads how many conntrack entries the measured
	// service has (podpath), as evidence the service path was taken.
	flows func() (int, error)
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
	t := &svcTopology{n: n, topology: &topology{contender: cPodpath, close: closeAllFn(closers...)}}
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
	t.programmed = time.Since(t0)
	counters, err := maps.OpenPinned(node.PinRoot, maps.MapCounters)
	if err != nil {
		return nil, err
	}
	closers = append(closers, counters.Close)
	t.close = closeAllFn(closers...)
	t.dst, t.dstPort, t.listenPort, t.wantPeer = measuredVIP, svcPort, svcTargetPort, t.client.IP
	t.connectFailuresOK = true
	t.path = &pathCounter{name: "from_pod_forward_local_pkts", required: true,
		read: func() (uint64, error) { return podpathCounter(counters, maps.HookFromPod, maps.ReasonForwardLocal) }}
	t.flows = func() (int, error) {
		fs, err := m.Conntrack().List(services.FlowFilter{Service: measuredSvcName})
		return len(fs), err
	}
	return t, nil
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
// kube-proxy's rules for n services, loaded as kube-proxy loads them.
func (e *env) kubeProxyTopology(ctx context.Context, n int) (_ *svcTopology, err error) {
	var closers []func() error
	t := &svcTopology{n: n, topology: &topology{contender: cIptables}}
	t.close = func() error { return closeAll(closers) }
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	br, err := newBridgeNode(e, fmt.Sprintf("kp%d", n), []string{"client", "server"}, &closers)
	if err != nil {
		return nil, err
	}
	t.client, t.server, t.devices = br.pods[0], br.pods[1], br.devices
	if err := kubeProxyStart(ctx, br.node); err != nil {
		return nil, err
	}
	svcs := kubeProxyServices(n, t.server.IP)
	rules := kubeProxyRules(svcs, netip.MustParsePrefix(kpClusterCIDR))
	rctx, cancel := context.WithTimeout(ctx, e.cfg.RestoreLimit)
	defer cancel()
	t0 := time.Now()
	if _, err := runIn(rctx, br.node, rules, kpRestore, "--noflush", "--counters"); err != nil {
		if rctx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("%w: %s of %d services took longer than %v", errTooSlow, kpRestore, n, e.cfg.RestoreLimit)
		}
		return nil, fmt.Errorf("load kube-proxy's rules for %d services: %w", n, err)
	}
	t.programmed = time.Since(t0)
	t.dst, t.dstPort, t.listenPort, t.wantPeer = measuredVIP, svcPort, svcTargetPort, t.client.IP
	t.connectFailuresOK = true
	sep := svcs[len(svcs)-1].sepChain(t.server.IP)
	node := br.node
	t.path = &pathCounter{name: "kube_sep_dnat_pkts", required: true,
		read: func() (uint64, error) { return chainRuleCounter(ctx, node, kpIptables, "nat", sep, "DNAT") }}
	return t, nil
}

var errTooSlow = errors.New("too slow")

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
// through the ClusterIP on all topologies, interleaved.
func (e *env) runServices(ctx context.Context) error {
	if _, err := exec.LookPath(kpRestore); err != nil {
		return fmt.Errorf("%s not found (apt-get install iptables): %w", kpRestore, err)
	}
	if err := e.programTime(ctx); err != nil {
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
	for _, n := range e.cfg.SvcCounts {
		for _, build := range []func(context.Context, int) (*svcTopology, error){e.podpathServiceTopology, e.kubeProxyTopology} {
			t, err := build(ctx, n)
			if errors.Is(err, errTooSlow) {
				e.res.Notes = append(e.res.Notes, "services: "+err.Error()+": not measured")
				slog.Warn("services: skipped", "services", n, "err", err)
				continue
			}
			if err != nil {
				return fmt.Errorf("%d services: %w", n, err)
			}
			topos = append(topos, t)
			t.info.Devices = deviceInfos(ctx, t.devices)
			m := e.res.record(famServices, fmt.Sprintf("program_all@%d", n), t.contender, "s", lower, t.programmed.Seconds())
			m.addExtra("services", n)
			slog.Info("services topology up", "contender", t.contender, "services", n, "programmed_in", t.programmed.Round(time.Millisecond))
		}
	}
	var plain []*topology
	for _, t := range topos {
		plain = append(plain, t.topology)
	}
	for _, n := range fairness(plain) {
		e.res.Notes = append(e.res.Notes, "services topologies differ: "+n)
	}
	e.describeServiceTopologies(topos)

	for rep := range e.cfg.SvcReps {
		for _, t := range rotate(topos, rep) {
			for _, crr := range []bool{false, true} {
				if err := e.measureService(ctx, t, crr, rep); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// measureService runs one TCP_RR or TCP_CRR through the measured ClusterIP.
func (e *env) measureService(ctx context.Context, t *svcTopology, crr bool, rep int) error {
	kind, unit := "rr", "transactions/s"
	if crr {
		kind, unit = "crr", "connections/s"
	}
	var r rrResult
	ev, err := measurePath(t.topology, func() (err error) {
		r, err = requestResponse(ctx, t.topology, crr, e.cfg.SvcWarmup, e.cfg.SvcTime)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e.res.recordFailure(famServices, t.contender, unit, higher, fmt.Errorf("services %s %s %d: %w", kind, t.contender, t.n, err),
			fmt.Sprintf("%s_rate@%d", kind, t.n))
		return nil
	}
	m := e.res.record(famServices, fmt.Sprintf("%s_rate@%d", kind, t.n), t.contender, unit, higher, r.rate)
	m.addExtra("services", t.n)
	m.addExtra("transactions", r.count)
	m.addExtra("p50_us", round3(r.p50))
	m.addExtra("p99_us", round3(r.p99))
	m.addExtra("server_saw_client", r.peer.String())
	if crr {
		m.addExtra("failed_connections", r.failed)
		e.noteFailures(famServices, fmt.Sprintf("%s with %s", t.contender, servicesLabel(t.n)), rep, r.failed)
	}
	ev.record(m, t.topology)
	if t.flows != nil {
		flows, err := t.flows()
		if err != nil {
			return fmt.Errorf("services %s podpath %d: conntrack: %w", kind, t.n, err)
		}
		if flows == 0 {
			return fmt.Errorf("services %s podpath %d: no conntrack entry for %s: the traffic did not take the service path", kind, t.n, measuredSvcName)
		}
		m.addExtra("conntrack_entries_of_service", flows)
	}
	slog.Info("services", "rep", rep+1, "kind", kind, "contender", t.contender, "services", t.n,
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
	rules := kubeProxyRules(kubeProxyServices(n, backend), netip.MustParsePrefix(kpClusterCIDR))

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
	}
	for rep := range e.cfg.SvcReps {
		for _, c := range rotate([]string{cPodpath, cIptables}, rep) {
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
	rctx, cancel := context.WithTimeout(ctx, e.cfg.RestoreLimit)
	defer cancel()
	t0 := time.Now()
	if _, err := runIn(rctx, n, rules, restore, "--noflush", "--counters"); err != nil {
		if rctx.Err() != nil && ctx.Err() == nil {
			return 0, fmt.Errorf("%w: took longer than %v", errTooSlow, e.cfg.RestoreLimit)
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
	for _, t := range topos {
		info := topologyInfo{Client: t.client.IP.String(), Server: t.server.IP.String(),
			Dst: fmt.Sprintf("%s:%d", t.dst, svcPort), Devices: t.info.Devices}
		switch t.contender {
		case cPodpath:
			info.Description = fmt.Sprintf("podpath: sim node, two pods by podpath-cni, %d ClusterIP services applied with services.Manager "+
				"(%d-1 with %d backends on other nodes, then %s -> server:%d); from_pod translates and redirects with bpf_redirect_peer",
				t.n, t.n, fillerBackends, measuredSvcName, svcTargetPort)
		default:
			info.Description = fmt.Sprintf("Docker's bridge (docker0, br_netfilter, ip_forward=1, Docker's rules) plus kube-proxy's iptables-mode "+
				"rules for %d ClusterIP services (%d-1 with %d endpoints, the measured one last in KUBE-SERVICES), "+
				"loaded with one `%s --noflush --counters` as kube-proxy does", t.n, t.n, fillerBackends, kpRestore)
		}
		info.Notes = append(info.Notes, fmt.Sprintf("programming all %d services took %v", t.n, t.programmed.Round(time.Millisecond)))
		e.res.Topologies[fmt.Sprintf("%s %s %d", famServices, t.contender, t.n)] = info
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
