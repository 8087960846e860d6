package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/podpath/podpath/internal/csum"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// Per-packet cost of each program path, timed by the kernel with
// BPF_PROG_RUN (the program runs `repeat` times back to back on one packet
// inside one syscall; the kernel reports the mean time per run in whole
// nanoseconds). Each repetition makes ProgCalls such calls and averages.

// Return codes (linux/pkt_cls.h, linux/bpf.h).
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
	xdpPass       = 2
)

// A pod as the CNI plugin registers it. benchDst's gateway MAC is benchSrc's
// own MAC: from_pod rewrites a forwarded frame's source MAC to the
// destination's gateway MAC, and BPF_PROG_RUN runs the program again on the
// rewritten frame, so only this way does every run take the forwarding path
// (the TTL, 255 at first, drops by one per run and outlasts the repeat
// count). The MAC values do not change the work the program does.
var (
	benchSrc = benchPod{IP: netip.MustParseAddr("10.244.0.10"), Ifindex: 10,
		MAC: mac("02:00:0a:f4:00:0a"), NodeMAC: mac("ee:ee:00:00:00:0a"), Cookie: 0x1000}
	benchDst = benchPod{IP: netip.MustParseAddr("10.244.0.20"), Ifindex: 20,
		MAC: mac("02:00:0a:f4:00:14"), NodeMAC: mac("02:00:0a:f4:00:0a"), Cookie: 0x2000}
	// Not a pod on this node: a ClusterIP-like address, handed to the stack.
	offNodeIP = netip.MustParseAddr("10.96.0.10")
	// In the pod CIDR but nobody's: a spoofed source.
	spoofedIP = netip.MustParseAddr("10.244.0.99")
	// Pods besides the two, so the endpoints map is not trivially small.
	otherPods = 254
	// A pod whose ingress policy applies (its gateway MAC benchSrc's, as
	// benchDst's), and the identities of the policy paths.
	benchGuarded = benchPod{IP: netip.MustParseAddr("10.244.0.30"), Ifindex: 30,
		MAC: mac("02:00:0a:f4:00:1e"), NodeMAC: mac("02:00:0a:f4:00:0a"), Cookie: 0x3000}
	benchSrcIdentity = maps.IdentityFirstUser + 244
	benchAllowedPeer = maps.IdentityFirstUser + 245
)

// The policy paths: a new connection looked up in a policy of one rule,
// and of policyManyRules with policyManyPods pods' identities and
// policyManyCIDRs ipBlock CIDRs known (the target says the cost does not
// grow with them).
const (
	pathPolicyOne   = "from_pod local SYN, destination's policy denies, 1 rule"
	pathPolicyMany  = "from_pod local SYN, destination's policy denies, 10,000 rules, 10,000 pods, 1,000 CIDRs"
	policyManyRules = 10000
	policyManyPods  = 10000
	policyManyCIDRs = 1000
)

type benchPod struct {
	IP      netip.Addr
	Ifindex uint32
	MAC     net.HardwareAddr
	NodeMAC net.HardwareAddr
	Cookie  uint64
}

func (p benchPod) info() maps.EndpointInfo {
	return maps.NewEndpointInfo(p.Ifindex, p.MAC, p.NodeMAC, p.Cookie)
}

// The tracing-off target's two paths: from_pod as attached, tracing off,
// and from_pod built without tracing's hooks.
const (
	pathTracingOff = "from_pod local SYN"
	pathNoTrace    = "from_pod local SYN, built without tracing"
)

// oneRunCalls is how many calls a one-run path makes per 1,000 calls of
// the others (each of whose calls runs the program ProgRepeat times).
const oneRunCalls = 4000

// pathBudgets: what a path may cost over a no-op of its program type, in
// ns per packet under BPF_PROG_RUN, judged per repetition (the path's time
// less its no-op's in the same repetition), every repetition under it.
var pathBudgets = []struct {
	path, label string
	ns          float64
}{
	{pathPodToPodSYN, "pod to pod on the node (from_pod, a SYN forwarded by redirect_peer)", 100},
	{pathService, "pod to a ClusterIP, local backend (from_pod: conntrack, DNAT, forward)", 150},
}

// progRunTargets: with tracing off, the hot path costs what it cost before
// trace events existed: the paired interval of the ratio reaches 1.0.
func progRunTargets(r *results) {
	num, den := r.find(famProgRun, "ns_per_packet", pathTracingOff), r.find(famProgRun, "ns_per_packet", pathNoTrace)
	p, ok := paired(num, den)
	if !ok {
		return
	}
	r.Targets = append(r.Targets, target{
		Name:  "bpf_prog_run: from_pod with tracing off vs built without tracing",
		Ratio: round3(p.Median), Want: "no measurable cost (95% interval reaches 1.00x)", Pass: p.Lo <= 1, Paired: &p,
		Detail: pairedDetail(p, num, den),
	})
	for _, b := range pathBudgets {
		m := r.find(famProgRun, "ns_per_packet", b.path)
		if m == nil || len(m.Extra["baseline"]) == 0 {
			continue
		}
		base := r.find(famProgRun, "ns_per_packet", fmt.Sprint(m.Extra["baseline"][0]))
		d, ok := pairedDiff(m, base)
		if !ok {
			continue
		}
		r.Targets = append(r.Targets, target{
			Name:  "bpf_prog_run budget: " + b.label + ", over a no-op",
			Ratio: round3(d.Median / b.ns), Want: fmt.Sprintf("< %.0f ns, the whole 95%% interval (ratio: median / budget)", b.ns), Pass: d.Hi < b.ns,
			Detail: fmt.Sprintf("per repetition, ns: %s; medians %s vs %s ns", d.describe(), formatValue(m.Median), formatValue(base.Median)),
		})
	}
	num, den = r.find(famProgRun, "ns_per_packet", pathPolicyMany), r.find(famProgRun, "ns_per_packet", pathPolicyOne)
	if p, ok = paired(num, den); !ok {
		return
	}
	r.Targets = append(r.Targets, target{
		Name:  fmt.Sprintf("bpf_prog_run: a policy lookup with %d rules, %d pods, %d CIDRs vs 1 rule", policyManyRules, policyManyPods, policyManyCIDRs),
		Ratio: round3(p.Median), Want: "no growth with rules, pods, CIDRs (95% interval reaches 1.00x)", Pass: p.Lo <= 1, Paired: &p,
		Detail: pairedDetail(p, num, den),
	})
}

// benchDport is the destination port of tcpFrame's segments.
const benchDport = 5201

// policySetup returns the setups of the policy paths: benchGuarded's
// ingress policy allows benchAllowedPeer TCP benchDport (and, with many,
// rules for other identities and ports too, other pods' identities and
// ipBlock CIDRs), never benchSrc, whose SYN every run then looks up in
// full and drops; or, tracked, allows benchSrc, whose connection the first
// run starts and the others find.
func policySetup(pol *maps.Policy, ct *ebpf.Map) (one, many, tracked func() error) {
	rule := func(id uint32, first, last uint16) maps.PolicyRule {
		return maps.PolicyRule{Endpoint: benchGuarded.IP, Direction: maps.PolicyIngress, Identity: id, Proto: 6, PortFirst: first, PortLast: last}
	}
	reset := func(rules ...maps.PolicyRule) error {
		// No connection is tracked: the first run of each path decides.
		var k maps.PolicyCtKey
		var v maps.PolicyCtEntry
		var tracked []maps.PolicyCtKey
		for it := ct.Iterate(); it.Next(&k, &v); {
			tracked = append(tracked, k)
		}
		for _, k := range tracked {
			if err := ct.Delete(k); err != nil {
				return err
			}
		}
		keys, err := pol.Keys()
		if err != nil {
			return err
		}
		for k := range keys {
			if err := pol.DeleteKey(k); err != nil {
				return err
			}
		}
		for _, r := range rules {
			if err := pol.Allow(r); err != nil {
				return err
			}
		}
		return nil
	}
	// Other pods' identities (10.100.0.0/16) and CIDRs (/24s of
	// 172.16.0.0/12), none holding benchSrc.
	crowd := func(on bool) error {
		for i := range policyManyPods {
			pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)}), 32)
			if !on {
				if err := pol.DeleteIdentity(pfx); err != nil {
					return err
				}
				continue
			}
			if err := pol.SetIdentity(pfx, maps.IdentityFirstUser+1000+uint32(i%100)); err != nil {
				return err
			}
		}
		for i := range policyManyCIDRs {
			pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i>>8), byte(i), 0}), 24)
			if !on {
				if err := pol.DeleteCIDRIdentity(pfx); err != nil {
					return err
				}
				continue
			}
			if err := pol.SetCIDRIdentity(pfx, maps.IdentityFirstUser+2000+uint32(i)); err != nil {
				return err
			}
		}
		return nil
	}
	one = func() error {
		if err := crowd(false); err != nil {
			return err
		}
		return reset(rule(benchAllowedPeer, benchDport, benchDport))
	}
	many = func() error {
		rules := []maps.PolicyRule{rule(benchAllowedPeer, benchDport, benchDport)}
		for i := range policyManyRules - 1 {
			rules = append(rules, rule(maps.IdentityFirstUser+1000+uint32(i/100), uint16(1+i%100), uint16(1+i%100)))
		}
		if err := crowd(true); err != nil {
			return err
		}
		return reset(rules...)
	}
	tracked = func() error { return reset(rule(benchSrcIdentity, benchDport, benchDport)) }
	return one, many, tracked
}

// progPath is one program path: a program, a packet, the verdict every run
// must return and the counter it must raise.
type progPath struct {
	name    string
	prog    *ebpf.Program
	frame   []byte
	ingress uint32 // skb ingress_ifindex; 0 for XDP
	xdp     bool
	verdict uint32
	reason  string // counter "hook/reason" raised once per run; "" for no-ops
	noop    string // the no-op path of the same program type
	// dropEvents is the drop events' rate per CPU during the path's runs
	// (burst the default); 0: off.
	dropEvents uint32
	// trace is what tracing selects during the path's runs; zero: off.
	trace maps.Trace
	// setup, when set, prepares the maps before the path's runs.
	setup func() error
	// counters is where reason is counted (default: the family's own
	// from_pod collection's).
	counters *ebpf.Map
	// oneRun: every call runs the program once on the frame as given. A
	// path that rewrites its packet into another path's (a Service's
	// DNAT) must not meet its own output.
	oneRun bool
}

// runProgRun times every path.
func (e *env) runProgRun(ctx context.Context) error {
	specs, err := maps.Specs()
	if err != nil {
		return err
	}
	for _, spec := range specs {
		for _, ms := range spec.Maps {
			ms.Pinning = ebpf.PinNone
		}
	}
	fromPod, err := ebpf.NewCollection(specs[maps.ProgFromPod])
	if err != nil {
		return fmt.Errorf("load %s: %w", maps.ProgFromPod, err)
	}
	defer fromPod.Close()
	shared := map[string]*ebpf.Map{}
	for _, name := range maps.AllMaps {
		if _, ok := specs[maps.ProgXDPNetdev].Maps[name]; ok {
			shared[name] = fromPod.Maps[name]
		}
	}
	xdp, err := ebpf.NewCollectionWithOptions(specs[maps.ProgXDPNetdev], ebpf.CollectionOptions{MapReplacements: shared})
	if err != nil {
		return fmt.Errorf("load %s: %w", maps.ProgXDPNetdev, err)
	}
	defer xdp.Close()
	// from_pod as built before trace events, and as the loader builds it
	// while tracing is on, on the same maps.
	noTraceSpec, err := maps.NoTraceSpec()
	if err != nil {
		return err
	}
	noTrace, err := loadSharing(noTraceSpec, fromPod)
	if err != nil {
		return fmt.Errorf("load %s without tracing: %w", maps.ProgFromPod, err)
	}
	defer noTrace.Close()
	tracedSpecs, err := maps.Specs()
	if err != nil {
		return err
	}
	tracedSpec := tracedSpecs[maps.ProgFromPod]
	if err := tracedSpec.Variables[maps.VarTraceCapable].Set(uint32(1)); err != nil {
		return err
	}
	traced, err := loadSharing(tracedSpec, fromPod)
	if err != nil {
		return fmt.Errorf("load %s with tracing: %w", maps.ProgFromPod, err)
	}
	defer traced.Close()
	tcTraced := traced.Programs[maps.ProgFromPod]

	eps := maps.NewEndpoints(fromPod.Maps[maps.MapEndpoints])
	for _, p := range []benchPod{benchSrc, benchDst, benchGuarded} {
		info := p.info()
		if p.IP == benchGuarded.IP {
			info.Flags = maps.EndpointPolicyIngress
		}
		if err := eps.Put(p.IP, info); err != nil {
			return err
		}
	}
	pol, err := maps.NewPolicy(fromPod.Maps)
	if err != nil {
		return err
	}
	if err := pol.SetIdentity(netip.PrefixFrom(benchSrc.IP, 32), benchSrcIdentity); err != nil {
		return err
	}
	policyOne, policyMany, policyTracked := policySetup(pol, fromPod.Maps[maps.MapPolicyCT])
	for i := range otherPods {
		p := benchPod{IP: netip.AddrFrom4([4]byte{10, 244, 1, byte(i)}), Ifindex: uint32(100 + i),
			MAC: net.HardwareAddr{2, 0, 10, 244, 1, byte(i)}, NodeMAC: net.HardwareAddr{0xee, 0xee, 0, 0, 1, byte(i)}}
		if err := eps.Put(p.IP, p.info()); err != nil {
			return err
		}
	}

	noopTC, err := noop(ebpf.SchedCLS, tcActOK)
	if err != nil {
		return err
	}
	defer noopTC.Close()
	noopXDP, err := noop(ebpf.XDP, xdpPass)
	if err != nil {
		return err
	}
	defer noopXDP.Close()

	svcProg, svcCounters, closeSvc, err := serviceNode(ctx)
	if err != nil {
		return fmt.Errorf("the Service path's node: %w", err)
	}
	defer closeSvc()

	tc, xp := fromPod.Programs[maps.ProgFromPod], xdp.Programs[maps.ProgXDPNetdev]
	syn := tcpFrame(benchSrc, benchDst.IP, 255, true, 0)
	data := tcpFrame(benchSrc, benchDst.IP, 255, false, 1400)
	toStack := tcpFrame(benchSrc, offNodeIP, 64, false, 1400)
	spoofed := tcpFrame(benchPod{IP: spoofedIP, MAC: benchSrc.MAC}, benchDst.IP, 64, false, 1400)
	fromWire := tcpFrame(benchPod{IP: netip.MustParseAddr("192.0.2.1"), MAC: mac("02:00:c0:00:02:01")}, benchDst.IP, 64, false, 1400)
	guarded := tcpFrame(benchSrc, benchGuarded.IP, 255, true, 0)
	paths := []progPath{
		{name: "noop tc (TC_ACT_OK)", prog: noopTC, frame: data, ingress: benchSrc.Ifindex, verdict: tcActOK},
		{name: pathTracingOff, prog: tc, frame: syn, ingress: benchSrc.Ifindex, verdict: tcActRedirect, reason: "from_pod/forward_local", noop: "noop tc (TC_ACT_OK)"},
		// The reference of the tracing-off target: the same path, built
		// without the trace events' hooks.
		{name: pathNoTrace, prog: noTrace.Programs[maps.ProgFromPod], frame: syn, ingress: benchSrc.Ifindex, verdict: tcActRedirect, reason: "from_pod/forward_local", noop: "noop tc (TC_ACT_OK)"},
		{name: "from_pod local 1400B", prog: tc, frame: data, ingress: benchSrc.Ifindex, verdict: tcActRedirect, reason: "from_pod/forward_local", noop: "noop tc (TC_ACT_OK)"},
		{name: "from_pod to-stack", prog: tc, frame: toStack, ingress: benchSrc.Ifindex, verdict: tcActOK, reason: "from_pod/to_stack", noop: "noop tc (TC_ACT_OK)"},
		{name: "from_pod drop spoofed", prog: tc, frame: spoofed, ingress: benchSrc.Ifindex, verdict: tcActShot, reason: "from_pod/drop_spoofed_ip", noop: "noop tc (TC_ACT_OK)"},
		// The same drops with drop events on at the default limit: past the
		// first burst, a flood's events are held back by the rate limit.
		{name: "from_pod drop spoofed, drop events on", prog: tc, frame: spoofed, ingress: benchSrc.Ifindex, verdict: tcActShot, reason: "from_pod/drop_spoofed_ip", noop: "noop tc (TC_ACT_OK)",
			dropEvents: maps.DefaultDropEventRate},
		{name: "from_pod local SYN, drop events on", prog: tc, frame: syn, ingress: benchSrc.Ifindex, verdict: tcActRedirect, reason: "from_pod/forward_local", noop: "noop tc (TC_ACT_OK)",
			dropEvents: maps.DefaultDropEventRate},
		// Tracing on (podpath monitor --trace) for another pod: each run
		// pays the filter's check; for this pod, every run raises a trace
		// event, read by a reader draining the ring buffer meanwhile.
		{name: "from_pod local SYN, tracing another pod", prog: tcTraced, frame: syn, ingress: benchSrc.Ifindex, verdict: tcActRedirect, reason: "from_pod/forward_local", noop: "noop tc (TC_ACT_OK)",
			trace: maps.Trace{Addr: offNodeIP}},
		{name: "from_pod local SYN, tracing this pod", prog: tcTraced, frame: syn, ingress: benchSrc.Ifindex, verdict: tcActRedirect, reason: "from_pod/forward_local", noop: "noop tc (TC_ACT_OK)",
			trace: maps.Trace{Addr: benchSrc.IP}},
		// Policy: the destination's ingress is enforced. A tracked
		// connection costs its conntrack lookup; a new one, its
		// identities and the policy's lookups (a denied SYN is never
		// tracked, so every run looks it up in full).
		{name: "from_pod local SYN, destination's policy, a tracked connection", prog: tc, frame: guarded, ingress: benchSrc.Ifindex,
			verdict: tcActRedirect, reason: "from_pod/forward_local", noop: "noop tc (TC_ACT_OK)", setup: policyTracked},
		{name: pathPolicyOne, prog: tc, frame: guarded, ingress: benchSrc.Ifindex, verdict: tcActShot,
			reason: "from_pod/drop_policy_ingress", noop: "noop tc (TC_ACT_OK)", setup: policyOne},
		{name: pathPolicyMany, prog: tc, frame: guarded, ingress: benchSrc.Ifindex, verdict: tcActShot,
			reason: "from_pod/drop_policy_ingress", noop: "noop tc (TC_ACT_OK)", setup: policyMany},
		// A Service's packet is translated on its first run: each call
		// runs it once, against a no-op timed the same way.
		{name: pathNoopOneRun, prog: noopTC, frame: syn, ingress: benchSrc.Ifindex, verdict: tcActOK, oneRun: true},
		{name: pathTracingOff + ", one run per call", prog: tc, frame: syn, ingress: benchSrc.Ifindex, verdict: tcActRedirect,
			reason: "from_pod/forward_local", noop: pathNoopOneRun, oneRun: true},
		{name: pathService, prog: svcProg, frame: tcpFrame(benchSrc, benchVIP, 64, true, 0), ingress: benchSrc.Ifindex, verdict: tcActRedirect,
			reason: "from_pod/forward_local", noop: pathNoopOneRun, counters: svcCounters, oneRun: true},
		{name: "noop xdp (XDP_PASS)", prog: noopXDP, frame: fromWire, xdp: true, verdict: xdpPass},
		{name: "xdp_netdev pass", prog: xp, frame: fromWire, xdp: true, verdict: xdpPass, reason: "xdp/to_stack", noop: "noop xdp (XDP_PASS)"},
	}
	counters := fromPod.Maps[maps.MapCounters]
	// A reader empties the ring buffer throughout, as podpath monitor
	// would: events find room, and their cost is the one a user sees.
	reader, err := ringbuf.NewReader(fromPod.Maps[maps.MapEvents])
	if err != nil {
		return err
	}
	defer reader.Close()
	go func() {
		for {
			if _, err := reader.Read(); err != nil {
				return
			}
		}
	}()
	for rep := range e.cfg.Reps {
		for _, p := range rotate(paths, rep) {
			if err := ctx.Err(); err != nil {
				return err
			}
			if p.setup != nil {
				if err := p.setup(); err != nil {
					return fmt.Errorf("%s: %w", p.name, err)
				}
			}
			pc := counters
			if p.counters != nil {
				pc = p.counters
			}
			before, err := readCounter(pc, p.reason)
			if err != nil {
				return err
			}
			if err := maps.WriteEventConfig(fromPod.Maps[maps.MapEventConfig], p.dropEvents, maps.DefaultDropEventBurst); err != nil {
				return err
			}
			if err := maps.SetTraceMap(fromPod.Maps[maps.MapEventConfig], p.trace); err != nil {
				return err
			}
			calls, repeat := e.cfg.ProgCalls, e.cfg.ProgRepeat
			if p.xdp {
				// Each XDP test run sets up and tears down an rxq (tens of
				// ms, outside the timed loop): the same runs in fewer calls.
				calls, repeat = xdpCalls, calls*repeat/xdpCalls
			}
			if p.oneRun {
				calls, repeat = oneRunCalls*calls/1000, 1
			}
			ns, err := timePath(p, calls, repeat)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			after, err := readCounter(pc, p.reason)
			if err != nil {
				return err
			}
			runs := uint64(calls * repeat)
			if p.reason != "" && after-before < runs {
				return fmt.Errorf("%s: counter %s rose by %d over %d runs: not every run took the path", p.name, p.reason, after-before, runs)
			}
			m := e.res.record(famProgRun, "ns_per_packet", p.name, "ns", lower, ns)
			if p.noop != "" {
				m.addExtra("baseline", p.noop)
			}
			m.addExtra("frame_bytes", len(p.frame))
			slog.Debug("bpf_prog_run", "rep", rep+1, "path", p.name, "ns", fmt.Sprintf("%.1f", ns))
		}
	}
	for _, p := range paths {
		m := e.res.find(famProgRun, "ns_per_packet", p.name)
		slog.Info("bpf_prog_run", "path", p.name, "median_ns", fmt.Sprintf("%.1f", m.Median))
	}
	return nil
}

// loadSharing loads spec with the maps of coll where both have one of the
// node's (pinned) maps: another build of a program on the same state.
func loadSharing(spec *ebpf.CollectionSpec, coll *ebpf.Collection) (*ebpf.Collection, error) {
	same := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		ms.Pinning = ebpf.PinNone
		if m, ok := coll.Maps[name]; ok && slices.Contains(maps.AllMaps, name) {
			same[name] = m
		}
	}
	return ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: same})
}

// noop is a program of the given type that returns ret and does nothing else.
func noop(typ ebpf.ProgramType, ret int32) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_noop", Type: typ, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("load no-op %s program: %w", typ, err)
	}
	return p, nil
}

// readCounter sums one "hook/reason" counter over CPUs; 0 for "".
func readCounter(m *ebpf.Map, hookReason string) (uint64, error) {
	if hookReason == "" {
		return 0, nil
	}
	cs, err := maps.ReadCounters(m)
	if err != nil {
		return 0, err
	}
	for _, c := range cs {
		if c.Hook.String()+"/"+c.Reason.String() == hookReason {
			return c.Packets, nil
		}
	}
	return 0, nil
}

// timePath makes calls BPF_PROG_RUN calls of repeat runs each and returns
// the mean nanoseconds per run, checking every verdict.
func timePath(p progPath, calls, repeat int) (float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var ctx []byte
	if !p.xdp {
		ctx = skbContext(p.ingress)
	}
	var total uint64
	for range calls {
		ret, dur, err := progRun(p.prog, p.frame, ctx, uint32(repeat))
		if err != nil {
			return 0, err
		}
		if ret != p.verdict {
			return 0, fmt.Errorf("verdict %d, want %d", ret, p.verdict)
		}
		total += uint64(dur)
	}
	return float64(total) / float64(calls), nil
}

// skbContext is the __sk_buff head a BPF_PROG_RUN caller may set
// (progrun.SkbContext) as bytes: the kernel copies ingress_ifindex into the
// skb, as tc ingress on a veth sees it.
func skbContext(ingressIfindex uint32) []byte {
	b, err := binary.Append(nil, binary.NativeEndian, progrun.SkbContext{IngressIfindex: ingressIfindex})
	if err != nil {
		panic(err) // a struct of uint32s always encodes
	}
	return b
}

// progRunAttr is the BPF_PROG_TEST_RUN member of union bpf_attr.
type progRunAttr struct {
	ProgFD      uint32
	Retval      uint32
	DataSizeIn  uint32
	DataSizeOut uint32
	DataIn      uint64
	DataOut     uint64
	Repeat      uint32
	Duration    uint32
	CtxSizeIn   uint32
	CtxSizeOut  uint32
	CtxIn       uint64
	CtxOut      uint64
	Flags       uint32
	CPU         uint32
	BatchSize   uint32
	_           uint32
}

const bpfProgTestRun = 10 // BPF_PROG_TEST_RUN

// xdpCalls is how many BPF_PROG_RUN calls an XDP path is split into.
const xdpCalls = 5

// progRun is BPF_PROG_RUN with a context and the kernel's own timing, which
// cilium/ebpf offers only without a context (Program.Benchmark). It returns
// the last run's verdict and the mean nanoseconds per run.
func progRun(p *ebpf.Program, data, ctx []byte, repeat uint32) (uint32, uint32, error) {
	attr := progRunAttr{
		ProgFD:     uint32(p.FD()),
		DataSizeIn: uint32(len(data)),
		DataIn:     uint64(uintptr(unsafe.Pointer(&data[0]))),
		Repeat:     repeat,
	}
	if len(ctx) > 0 {
		attr.CtxSizeIn = uint32(len(ctx))
		attr.CtxIn = uint64(uintptr(unsafe.Pointer(&ctx[0])))
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_BPF, bpfProgTestRun, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		runtime.KeepAlive(data)
		runtime.KeepAlive(ctx)
		if errno == unix.EINTR {
			continue // a signal cut the runs short: run them again
		}
		if errno != 0 {
			return 0, 0, fmt.Errorf("BPF_PROG_RUN: %w", errors.New(errno.Error()))
		}
		return attr.Retval, attr.Duration, nil
	}
}

// tcpFrame is an Ethernet + IPv4 + TCP frame from pod src to dst: a SYN
// with the options Linux sends (40-byte TCP header), or an ACK|PSH data
// segment padded so the IPv4 packet is ipLen bytes. Checksums are correct.
func tcpFrame(src benchPod, dst netip.Addr, ttl uint8, syn bool, ipLen int) []byte {
	var tcp []byte
	if syn {
		tcp = make([]byte, 40)
		tcp[12] = 10 << 4
		tcp[13] = 0x02                                                                            // SYN
		copy(tcp[20:], []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7}) // MSS, SACK ok, TS, NOP, WS
	} else {
		tcp = make([]byte, ipLen-20)
		tcp[12] = 5 << 4
		tcp[13] = 0x18 // ACK|PSH
		for i := 20; i < len(tcp); i++ {
			tcp[i] = byte(i)
		}
	}
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], benchDport)
	binary.BigEndian.PutUint32(tcp[4:], 1)
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	s, d := src.IP.As4(), dst.As4()
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, 6, byte(len(tcp)>>8), byte(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], csum.Checksum(append(pseudo, tcp...), 0))

	ip := make([]byte, 20, 20+len(tcp))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8], ip[9] = ttl, 6
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], csum.Checksum(ip, 0))
	ip = append(ip, tcp...)

	frame := make([]byte, 0, 14+len(ip))
	frame = append(frame, benchSrc.NodeMAC...) // to the pod's gateway
	frame = append(frame, src.MAC...)
	frame = binary.BigEndian.AppendUint16(frame, 0x0800)
	return append(frame, ip...)
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}
