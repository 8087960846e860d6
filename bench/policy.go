package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/policy"
)

// The policy family: TCP_RR and TCP_CRR between two pods of one node with
// no NetworkPolicy (podpath), and with policyCount policies selecting the
// server, one of them allowing the client (podpath+policy), over a cluster
// of policyPods other pods, each with a label set of its own (so as many
// identities); and the time the agent's computation and map writes take
// to program those policies (policy.Compile and policy.Apply, in
// process, the cluster's identities already written).
const (
	famPolicy        = "policy"
	cPodpathPolicy   = "podpath+policy"
	policyCount      = 1000
	policyPods       = 10000
	policyNamespaces = 100
	// The request/response server's port, which the allowing policy names.
	policyServerPort = 5300
	policyNode       = "bench-node"
)

// policyCluster is the simulated cluster the policies are compiled from.
type policyCluster struct {
	pods       []policy.Pod
	namespaces []policy.Namespace
	pols       []*networkingv1.NetworkPolicy
}

// newPolicyCluster: client and server in namespace bench on this node;
// policyPods others on other nodes, spread over policyNamespaces
// namespaces, in groups of ten (label group); policyCount policies in
// bench selecting the server: policy 0 allows the client TCP
// policyServerPort, policy i > 0 allows group i from any namespace TCP
// 6000+i (ten identities each).
func newPolicyCluster(client, server netip.Addr) policyCluster {
	c := policyCluster{namespaces: []policy.Namespace{{Name: "bench", Labels: map[string]string{"team": "bench"}}}}
	for i := range policyNamespaces {
		c.namespaces = append(c.namespaces, policy.Namespace{Name: fmt.Sprintf("ns-%d", i), Labels: map[string]string{"team": fmt.Sprintf("t%d", i)}})
	}
	c.pods = []policy.Pod{
		{Namespace: "bench", Name: "client", Labels: map[string]string{"app": "client"}, IP: client, Node: policyNode},
		{Namespace: "bench", Name: "server", Labels: map[string]string{"app": "server"}, IP: server, Node: policyNode},
	}
	for i := range policyPods {
		c.pods = append(c.pods, policy.Pod{
			Namespace: fmt.Sprintf("ns-%d", i%policyNamespaces), Name: fmt.Sprintf("p%d", i),
			Labels: map[string]string{"group": fmt.Sprintf("g%d", i%policyCount), "pod": fmt.Sprintf("p%d", i)},
			IP:     netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)}), Node: fmt.Sprintf("node-%d", i%50),
		})
	}
	tcp := corev1.ProtocolTCP
	serverSel := metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}
	for i := range policyCount {
		port := intstr.FromInt32(int32(6000 + i))
		peer := networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{},
			PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"group": fmt.Sprintf("g%d", i)}}}
		if i == 0 {
			port = intstr.FromInt32(policyServerPort)
			peer = networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}
		}
		c.pols = append(c.pols, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("p%d", i)},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: serverSel, Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{peer}, Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}}}},
		})
	}
	return c
}

// policyProgrammer switches a node between no policy and the cluster's
// policies, timing each step.
type policyProgrammer struct {
	pol     *maps.Policy
	alloc   *policy.Allocator
	cluster policyCluster
	server  netip.Addr
	fromPod *ebpf.Program
}

// runStats is from_pod's accumulated run time and runs.
func (p *policyProgrammer) runStats() (time.Duration, uint64, error) {
	st, err := p.fromPod.Stats()
	if err != nil {
		return 0, 0, err
	}
	return st.Runtime, st.RunCount, nil
}

// program compiles pols (nil: none) and applies the difference.
func (p *policyProgrammer) program(pols []*networkingv1.NetworkPolicy) (compile, apply time.Duration, ch policy.Changes, err error) {
	t0 := time.Now()
	st := policy.Compile(policyNode, p.cluster.pods, p.cluster.namespaces, pols, p.alloc)
	t1 := time.Now()
	ch, err = policy.Apply(p.pol, st)
	return t1.Sub(t0), time.Since(t1), ch, err
}

// allowed is the connections the server's rules let in so far.
func (p *policyProgrammer) allowed() (uint64, error) {
	keys, err := p.pol.Keys()
	if err != nil {
		return 0, err
	}
	var n uint64
	for k, v := range keys {
		if k.EndpointAddr() == p.server {
			n += v
		}
	}
	return n, nil
}

func (e *env) runPolicy(ctx context.Context) error {
	t, err := e.podpathTopology(ctx, "pol")
	if err != nil {
		return fmt.Errorf("build podpath topology: %w", err)
	}
	defer t.close()
	pin, err := pinnedCPUs()
	if err != nil {
		return err
	}
	t.cpus, t.listenPort = pin, policyServerPort
	t.info.Client, t.info.Server, t.info.Dst = t.client.IP.String(), t.server.IP.String(), t.dst.String()
	t.info.Notes = append(t.info.Notes, fmt.Sprintf("client pinned to CPU %d, server to CPU %d", pin.client, pin.server))
	t.info.Devices = deviceInfos(ctx, t.devices)
	if e.res.Topologies == nil {
		e.res.Topologies = map[string]topologyInfo{}
	}
	e.res.Topologies[famPolicy+" "+cPodpath] = t.info
	pol, err := maps.OpenPolicy(t.pinRoot)
	if err != nil {
		return err
	}
	defer pol.Close()
	p := &policyProgrammer{pol: pol, alloc: policy.NewAllocator(), cluster: newPolicyCluster(t.client.IP, t.server.IP), server: t.server.IP}
	// The kernel's run-time statistics (kernel.bpf_stats_enabled while
	// the family runs): from_pod's own time per packet, under live traffic.
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return fmt.Errorf("enable BPF run-time statistics: %w", err)
	}
	defer stats.Close()
	if p.fromPod, err = loader.LoadPinnedProgram(t.pinRoot, maps.ProgFromPod); err != nil {
		return err
	}
	defer p.fromPod.Close()
	// Every pod's identity, as the agent writes them whether or not a
	// policy exists.
	if _, _, ch, err := p.program(nil); err != nil {
		return fmt.Errorf("write identities: %w", err)
	} else if ch.IdentitiesSet != policyPods+2 {
		return fmt.Errorf("wrote %d identities, want %d", ch.IdentitiesSet, policyPods+2)
	}

	for rep := range e.cfg.Reps {
		if err := e.policyProgramTimes(p, rep); err != nil {
			return err
		}
		for _, crr := range []bool{false, true} {
			if err := e.policyRR(ctx, t, p, crr, rep); err != nil {
				return err
			}
		}
	}
	_, _, _, err = p.program(nil)
	return err
}

// policySlices is how many turns each contender takes in one repetition:
// the two alternate (ABBAABBAAB...), so the machine's drift within a
// repetition falls on both alike and their paired ratio holds what
// differs between them.
const policySlices = 5

// policyProgramTimes times programming the policies from none, and one
// policy's change.
func (e *env) policyProgramTimes(p *policyProgrammer, rep int) error {
	if _, _, _, err := p.program(nil); err != nil {
		return fmt.Errorf("remove the policies: %w", err)
	}
	compile, apply, ch, err := p.program(p.cluster.pols)
	if err != nil {
		return fmt.Errorf("program %d policies: %w", policyCount, err)
	}
	// Ten identities for each policy but the client's, one for it.
	if want := (policyCount-1)*10 + 1; ch.KeysAdded != want {
		return fmt.Errorf("programming %d policies wrote %d keys, want %d", policyCount, ch.KeysAdded, want)
	}
	e.res.record(famPolicy, "program_all", cPodpathPolicy, "ms", lower, ms(compile+apply)).addExtra("keys", ch.KeysAdded)
	e.res.record(famPolicy, "program_all_compile", cPodpathPolicy, "ms", lower, ms(compile))
	e.res.record(famPolicy, "program_all_apply", cPodpathPolicy, "ms", lower, ms(apply))
	slog.Info(famPolicy, "rep", rep+1, "program_all_ms", fmt.Sprintf("%.0f", ms(compile+apply)), "keys", ch.KeysAdded)
	// One policy changed: its port.
	changed := append([]*networkingv1.NetworkPolicy{}, p.cluster.pols...)
	np := changed[1].DeepCopy()
	port := intstr.FromInt32(5999)
	np.Spec.Ingress[0].Ports[0].Port = &port
	changed[1] = np
	compile, apply, _, err = p.program(changed)
	if err != nil {
		return err
	}
	e.res.record(famPolicy, "program_one_change", cPodpathPolicy, "ms", lower, ms(compile+apply))
	return nil
}

// policyRR measures TCP_RR or TCP_CRR for both contenders in alternating
// slices, programming each one's state before its slice, and records each
// contender's rate over all its slices and the median of their p99s.
func (e *env) policyRR(ctx context.Context, t *topology, p *policyProgrammer, crr bool, rep int) error {
	kind, unit := rrKind(crr), "transactions/s"
	if crr {
		unit = "connections/s"
	}
	type total struct {
		count   int
		seconds float64
		p99s    []float64
		allowed uint64
		ev      evidence
		runtime time.Duration
		runs    uint64
	}
	totals := map[string]*total{cPodpath: {}, cPodpathPolicy: {}}
	order := rotate([]string{cPodpath, cPodpathPolicy}, rep)
	slice := e.cfg.RRTime / policySlices
	for i := range policySlices {
		for j := range order {
			c := order[j]
			if i%2 == 1 {
				c = order[len(order)-1-j]
			}
			pols := p.cluster.pols
			if c == cPodpath {
				pols = nil
			}
			if _, _, _, err := p.program(pols); err != nil {
				return fmt.Errorf("%s: program %s's state: %w", famPolicy, c, err)
			}
			before, err := p.allowed()
			if err != nil {
				return err
			}
			rt0, runs0, err := p.runStats()
			if err != nil {
				return err
			}
			var r rrResult
			ev, err := measurePath(t, func() (err error) {
				r, err = requestResponse(ctx, t, crr, e.cfg.RRWarmup/policySlices, slice)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s %s %s: %w", famPolicy, kind, c, err)
			}
			after, err := p.allowed()
			if err != nil {
				return err
			}
			rt1, runs1, err := p.runStats()
			if err != nil {
				return err
			}
			// With the policies, every new connection is looked up and
			// let in by the client's rule: its count must rise.
			if c == cPodpathPolicy && after <= before {
				return fmt.Errorf("%s %s %s: the allowing rule's count did not rise (%d): the traffic did not meet the policy", famPolicy, kind, c, after)
			}
			tt := totals[c]
			tt.count += r.count
			tt.seconds += slice.Seconds()
			tt.p99s = append(tt.p99s, r.p99)
			tt.allowed += after - before
			tt.runtime += rt1 - rt0
			tt.runs += runs1 - runs0
			tt.ev.add(ev)
		}
	}
	for _, c := range order {
		tt := totals[c]
		rate := float64(tt.count) / tt.seconds
		m := e.res.record(famPolicy, kind+"_rate", c, unit, higher, rate)
		m.addExtra("transactions", tt.count)
		m.addExtra("policy_allowed_connections", tt.allowed)
		tt.ev.record(m, t)
		slices.Sort(tt.p99s)
		p99 := tt.p99s[len(tt.p99s)/2]
		e.res.record(famPolicy, kind+"_p99", c, "µs", lower, p99)
		if tt.runs > 0 {
			ns := float64(tt.runtime.Nanoseconds()) / float64(tt.runs)
			e.res.record(famPolicy, kind+"_from_pod_ns", c, "ns per packet", lower, ns).addExtra("runs", tt.runs)
		}
		slog.Info(famPolicy, "rep", rep+1, "contender", c, "kind", kind, "rate", fmt.Sprintf("%.0f", rate), "p99_us", fmt.Sprintf("%.1f", p99))
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// policyTargets: the allowed flow within 5% of no policy (the whole 95%
// interval at or above 0.95x), and the policies programmed in under a
// second (every repetition).
func policyTargets(r *results) {
	for _, kind := range []struct{ metric, label string }{{"rr_rate", "TCP_RR"}, {"crr_rate", "TCP_CRR"}} {
		num, den := r.find(famPolicy, kind.metric, cPodpathPolicy), r.find(famPolicy, kind.metric, cPodpath)
		p, ok := paired(num, den)
		if !ok {
			continue
		}
		r.Targets = append(r.Targets, target{
			Name:  fmt.Sprintf("policy: %s rate allowed among %d policies (%d identities) vs no policy", kind.label, policyCount, policyPods),
			Ratio: round3(p.Median), Want: ">= 0.95x (whole 95% interval)", Pass: p.Lo >= 0.95, Paired: &p,
			Detail: pairedDetail(p, num, den),
		})
	}
	if m := r.find(famPolicy, "program_all", cPodpathPolicy); m != nil && m.trusted() {
		r.Targets = append(r.Targets, target{
			Name:  fmt.Sprintf("policy: %d policies programmed (compile and write)", policyCount),
			Ratio: round3(m.Max / 1000), Want: "< 1 s in every repetition", Pass: m.Max < 1000,
			Detail: fmt.Sprintf("median %s ms, %s-%s ms over %d", formatValue(m.Median), formatValue(m.Min), formatValue(m.Max), len(m.Reps)),
		})
	}
}
