package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The control-plane family: how fast Services and EndpointSlices written
// to a real kube-apiserver (etcd and kube-apiserver from internal/kubetest)
// reach the datapath, for `podpath agent` and the real kube-proxy of the
// same Kubernetes build in iptables and nftables mode, each in a fresh
// node namespace of its own joined to the control plane's:
//
//	(a) with every contender running, CPServices Services with 1 to 10
//	    endpoints each are created, and their EndpointSlices (written here
//	    with the trigger-time annotation); from the last create call
//	    returning to the end of the sync that programmed the last of them.
//	    Once: the contenders run at nice 19 while the objects are created
//	    (see cpCreate), at 0 from the last create call on.
//	(a') then, in rounds, each contender alone (rotated order): started
//	    fresh with every object already in the API, from its process start
//	    to everything programmed;
//	(b) and in the same turn one EndpointSlice at a time changes (an
//	    endpoint replaced by another address): the contender's own network
//	    programming latency for it (trigger time to programmed) and the sync
//	    time it spent on it, read from its metrics before and after.

// famControlPlane is the family's name.
const famControlPlane = "control_plane"

// cpResolution is the floor of (a): podpath's sync times come from its
// log, to the millisecond.
const cpResolution = 0.001

// cpCreateNice is the contenders' nice value while the objects are
// created.
const cpCreateNice = 19

// cpSpecs are the contenders and their nodes.
func cpSpecs() []cpSpec {
	return []cpSpec{
		{contender: cPodpath, node: "cp-podpath", port: "n-pp", addr: netip.MustParsePrefix("10.250.0.2/24"), podCIDR: "10.244.1.0/24", start: startPodpathNode},
		{contender: cpKPIptables, node: "cp-kube-proxy-iptables", port: "n-kpi", addr: netip.MustParsePrefix("10.250.0.3/24"), podCIDR: "10.244.2.0/24", start: startKubeProxyNode},
		{contender: cpKPNftables, node: "cp-kube-proxy-nftables", port: "n-kpn", addr: netip.MustParsePrefix("10.250.0.4/24"), podCIDR: "10.244.3.0/24", start: startKubeProxyNode},
	}
}

func (e *env) runControlPlane(ctx context.Context) error {
	cfg := e.cfg
	var specs []cpSpec
	for _, s := range cpSpecs() {
		tool := map[string]string{cpKPIptables: "iptables-legacy-restore", cpKPNftables: "nft"}[s.contender]
		if tool != "" {
			if _, err := exec.LookPath(tool); err != nil {
				e.res.Notes = append(e.res.Notes, fmt.Sprintf("control_plane: %s not measured: %s not found (apt-get install iptables nftables)", s.contender, tool))
				continue
			}
		}
		specs = append(specs, s)
	}
	c, err := startControlPlane(cfg.CPQPS)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.ensureNamespace(ctx); err != nil {
		return err
	}
	for _, s := range specs {
		if err := c.createNode(ctx, s.node, s.addr.Addr(), s.podCIDR); err != nil {
			return err
		}
	}
	e.res.Notes = append(e.res.Notes, cpNotes(cfg, c)...)
	e.res.Notes = append(e.res.Notes, "control_plane: podpath agent built from the working tree: "+srcState(e.srcDir))

	specs, objs, wants, err := e.cpCreate(ctx, c, specs)
	if err != nil {
		return err
	}

	// The same changes for every contender: per round, which services.
	rng := rand.New(rand.NewPCG(7, uint64(cfg.CPServices)))
	picks := make([][]int, cfg.CPRounds)
	for i := range cfg.CPChanges {
		r := i % cfg.CPRounds
		picks[r] = append(picks[r], rng.IntN(cfg.CPServices))
	}
	dropped := map[string]bool{}
	for round := range cfg.CPRounds {
		for _, s := range rotate(specs, round) {
			if dropped[s.contender] {
				continue
			}
			err := e.cpTurn(ctx, c, s, objs, wants[s.contender], round, picks[round])
			if err == nil {
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if s.contender == cPodpath {
				return fmt.Errorf("%s, round %d: %w", s.contender, round+1, err)
			}
			e.cpDrop(s.contender, fmt.Sprintf("round %d", round+1), err)
			dropped[s.contender] = true
		}
	}
	e.cpPercentiles()
	return nil
}

// cpDrop reports a kube-proxy mode that failed: noted, not fatal.
func (e *env) cpDrop(contender, when string, err error) {
	e.res.Notes = append(e.res.Notes, fmt.Sprintf("control_plane: %s failed (%s) and was not measured further: %v", contender, when, err))
	slog.Warn("control plane: contender failed", "contender", contender, "when", when, "err", err)
}

// cpCreate starts every contender on a fresh node, creates the objects
// while they run, and records (a) for each; then stops them. It returns
// the contenders still standing, the objects, and what each must program.
func (e *env) cpCreate(ctx context.Context, c *cpCluster, specs []cpSpec) (_ []cpSpec, _ *cpObjects, _ map[string]cpCounts, err error) {
	cfg := e.cfg
	var nodes []*cpNode
	defer func() {
		for _, n := range nodes {
			err = errors.Join(err, n.close())
		}
	}()
	var ok []cpSpec
	for _, s := range specs {
		slog.Info("control plane: starting", "contender", s.contender, "for", "creation")
		n, err := s.start(ctx, e, c, s)
		if err != nil {
			if s.contender == cPodpath || ctx.Err() != nil {
				return nil, nil, nil, err
			}
			e.cpDrop(s.contender, "start", err)
			continue
		}
		nodes, ok = append(nodes, n), append(ok, s)
	}
	// In a cluster the API server has machines of its own. Here it shares
	// two cores with the contenders, whose syncs at up to 10,000 Services
	// would starve it: creating the objects took 13.5 minutes with every
	// contender at the same priority, one minute with none running. While
	// the objects are created every contender runs at nice 19, then all
	// at 0 again: (a) starts from there, the contenders on equal terms.
	for _, n := range nodes {
		if err := n.proc.setNice(cpCreateNice); err != nil {
			return nil, nil, nil, err
		}
	}
	t0 := time.Now()
	objs, err := c.create(ctx, cfg.CPServices, cfg.CPWorkers)
	if err != nil {
		return nil, nil, nil, err
	}
	tCreated := time.Now()
	for _, n := range nodes {
		if err := n.proc.setNice(0); err != nil {
			return nil, nil, nil, err
		}
	}
	slog.Info("control plane: created", "services", objs.n, "endpoints", objs.endpoints, "took", tCreated.Sub(t0).Round(time.Millisecond))
	e.res.Notes = append(e.res.Notes, fmt.Sprintf("control_plane: creating the %d Services and %d EndpointSlices (%d endpoints) took %v with every contender running at nice %d (0 again from the last create on)",
		objs.n, objs.n, objs.endpoints, tCreated.Sub(t0).Round(time.Second), cpCreateNice))
	wants := map[string]cpCounts{}
	specs = ok[:0:0]
	for _, n := range nodes {
		want := n.base
		want.services += objs.n
		want.endpoints += objs.endpoints
		want.svcChanges += float64(objs.n)
		want.epChanges += float64(objs.n)
		want.rulesServices += objs.n
		want.rulesEps += objs.endpoints
		// The contender's own timestamp says when: polling them one after
		// another biases none.
		at, got, err := n.waitProgrammed(ctx, want, cfg.CPSettleLimit)
		if err != nil {
			if n.spec.contender == cPodpath || ctx.Err() != nil {
				return nil, nil, nil, err
			}
			e.cpDrop(n.spec.contender, "creation", err)
			continue
		}
		wants[n.spec.contender] = want
		specs = append(specs, n.spec)
		// A contender that kept up may have programmed the last object
		// before the create call's response reached the bench; podpath's
		// time is its log's, to the millisecond. Below that: 1 ms.
		lag := at.Sub(tCreated).Seconds()
		m := e.res.record(famControlPlane, "programmed_after_created", n.spec.contender, "s", lower, max(lag, cpResolution))
		m.addExtra("measured_s", round3(lag))
		m.addExtra("services", objs.n)
		m.addExtra("endpoints", objs.endpoints)
		m.addExtra("creation_s", round3(tCreated.Sub(t0).Seconds()))
		m.addExtra("programmed_after_first_create_s", round3(at.Sub(t0).Seconds()))
		m.addExtra("frontends_in_datapath", got.rulesServices-n.base.rulesServices)
		m.addExtra("endpoints_in_datapath", got.rulesEps-n.base.rulesEps)
		slog.Info("control plane: all programmed", "contender", n.spec.contender,
			"after_created", at.Sub(tCreated).Round(time.Millisecond), "after_first_create", at.Sub(t0).Round(time.Millisecond))
	}
	return specs, objs, wants, nil
}

// cpTurn is one contender's turn in a round: a fresh node running it with
// every object already in the API, timed until all is programmed, then the
// changes measured one at a time.
func (e *env) cpTurn(ctx context.Context, c *cpCluster, s cpSpec, objs *cpObjects, want cpCounts, round int, picks []int) (err error) {
	cfg := e.cfg
	slog.Info("control plane: starting", "contender", s.contender, "round", round+1)
	node, err := s.start(ctx, e, c, s)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, node.close()) }()
	at, got, err := node.waitProgrammed(ctx, want, cfg.CPSettleLimit)
	if err != nil {
		return err
	}
	m := e.res.record(famControlPlane, "programmed_after_start", s.contender, "s", lower, at.Sub(node.started).Seconds())
	m.addExtra("round", round+1)
	m.addExtra("frontends_in_datapath", got.rulesServices)
	m.addExtra("endpoints_in_datapath", got.rulesEps)
	slog.Info("control plane: all programmed", "contender", s.contender, "round", round+1, "after_start", at.Sub(node.started).Round(time.Millisecond))

	for k, i := range picks {
		if err := ctx.Err(); err != nil {
			return err
		}
		ch, err := node.measureChange(ctx, c, objs, i)
		if err != nil {
			return fmt.Errorf("change %d (service %d): %w", k+1, i, err)
		}
		ml := e.res.record(famControlPlane, "change_latency", s.contender, "ms", lower, ch.latency*1000)
		ml.addExtra("round", round+1)
		ml.addExtra("service", i)
		ml.addExtra("programming_observations", ch.observations)
		if ch.seen > 0 {
			ml.addExtra("bench_saw_in_maps_ms", round3(ch.seen.Seconds()*1000))
		}
		ms := e.res.record(famControlPlane, "sync_per_change", s.contender, "ms", lower, ch.syncWork*1000)
		ms.addExtra("round", round+1)
		ms.addExtra("syncs", ch.syncs)
		slog.Debug("control plane: change", "contender", s.contender, "service", i,
			"latency_ms", fmt.Sprintf("%.2f", ch.latency*1000), "sync_ms", fmt.Sprintf("%.2f", ch.syncWork*1000), "syncs", ch.syncs)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(cfg.CPSpacing):
		}
	}
	if l := e.res.find(famControlPlane, "change_latency", s.contender); l != nil && len(picks) > 0 {
		slog.Info("control plane: changes", "contender", s.contender, "round", round+1, "changes", len(picks),
			"latency_median_ms_so_far", fmt.Sprintf("%.2f", l.Median),
			"sync_median_ms_so_far", fmt.Sprintf("%.2f", e.res.find(famControlPlane, "sync_per_change", s.contender).Median))
	}
	return nil
}

// waitProgrammed polls the contender's metrics until everything created
// is programmed, then checks the datapath holds every service; it returns
// when the sync that completed it ended, and what the datapath holds.
func (n *cpNode) waitProgrammed(ctx context.Context, want cpCounts, limit time.Duration) (time.Time, cpCounts, error) {
	deadline := time.Now().Add(limit)
	var last cpCounts
	for {
		if n.proc.exited() {
			return time.Time{}, last, fmt.Errorf("%s exited:\n%s", n.spec.contender, n.proc.tail(3000))
		}
		m, err := n.scrape(ctx)
		if err != nil {
			slog.Debug("control plane: scrape", "contender", n.spec.contender, "err", err)
		} else if at, ok := n.settled(m, want); ok {
			if last, err = n.count(ctx); err != nil {
				return time.Time{}, last, err
			}
			if last.rulesServices == want.rulesServices {
				// Counting takes a while (iptables-save): had a sync run
				// since, it is the one that completed the state.
				if m, err := n.scrape(ctx); err == nil {
					if at2, ok := n.settled(m, want); ok {
						at = at2
					}
				}
				return at, last, nil
			}
			slog.Info("control plane: settled but the datapath differs", "contender", n.spec.contender,
				"frontends", last.rulesServices, "want", want.rulesServices)
		}
		if time.Now().After(deadline) {
			return time.Time{}, last, fmt.Errorf("%w: not everything programmed %v after the last create (datapath: %d of %d services)",
				errTooSlow, limit, last.rulesServices, want.rulesServices)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, last, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// cpChange is what one EndpointSlice change cost a contender.
type cpChange struct {
	// latency is the contender's own network programming latency of the
	// change (seconds): the histogram's sum grew by it.
	latency float64
	// syncWork is the sync time spent from the change until it was
	// programmed (seconds), over syncs syncs.
	syncWork, syncs float64
	// observations the programming histogram gained (1 expected).
	observations float64
	// seen is when the bench saw the new backend in the maps (podpath).
	seen time.Duration
}

// measureChange changes service i's slice and waits until the contender
// reports it programmed: its programming and sync histograms both grew.
func (n *cpNode) measureChange(ctx context.Context, c *cpCluster, o *cpObjects, i int) (cpChange, error) {
	var ch cpChange
	m0, err := n.scrape(ctx)
	if err != nil {
		return ch, err
	}
	pc0, ps0 := n.hist(m0, n.progMetric)
	sc0, ss0 := n.hist(m0, n.syncMetric)
	addr, trigger, err := c.change(ctx, o, i)
	if err != nil {
		return ch, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	if n.seen != nil {
		for {
			ok, err := n.seen(o.clusterIPs[i], addr)
			if err != nil {
				return ch, err
			}
			if ok {
				ch.seen = time.Since(trigger)
				break
			}
			if time.Now().After(deadline) {
				return ch, fmt.Errorf("%s of service %d not in the maps after 2 minutes", addr, i)
			}
			time.Sleep(500 * time.Microsecond)
		}
	}
	for {
		m1, err := n.scrape(ctx)
		if err != nil {
			return ch, err
		}
		pc1, ps1 := n.hist(m1, n.progMetric)
		sc1, ss1 := n.hist(m1, n.syncMetric)
		if pc1 > pc0 && sc1 > sc0 {
			ch.observations, ch.latency = pc1-pc0, (ps1-ps0)/(pc1-pc0)
			ch.syncs, ch.syncWork = sc1-sc0, ss1-ss0
			return ch, nil
		}
		if time.Now().After(deadline) || n.proc.exited() {
			return ch, fmt.Errorf("change not reported programmed after 2 minutes (%s: %v -> %v, %s: %v -> %v)", n.progMetric, pc0, pc1, n.syncMetric, sc0, sc1)
		}
		select {
		case <-ctx.Done():
			return ch, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// cpPercentiles adds p50 and p99 over all changes of each contender, with
// the same percentiles per round as the spread.
func (e *env) cpPercentiles() {
	for _, s := range cpSpecs() {
		for _, base := range []string{"change_latency", "sync_per_change"} {
			m := e.res.find(famControlPlane, base, s.contender)
			if m == nil || len(m.Reps) == 0 {
				continue
			}
			byRound := map[int][]float64{}
			for k, v := range m.Reps {
				r, _ := m.Extra["round"][k].(int)
				byRound[r] = append(byRound[r], v)
			}
			all := slices.Sorted(slices.Values(m.Reps))
			for _, p := range []float64{50, 99} {
				pm := e.res.record(famControlPlane, fmt.Sprintf("%s_p%.0f", base, p), s.contender, "ms", lower, round3(percentile(all, p)))
				pm.addExtra("changes", len(all))
				for _, r := range slices.Sorted(maps.Keys(byRound)) {
					v := slices.Sorted(slices.Values(byRound[r]))
					pm.addExtra("per_round", round3(percentile(v, p)))
				}
			}
		}
	}
}

// cpNotes say how the family measures, in the results.
func cpNotes(c config, cl *cpCluster) []string {
	return []string{
		fmt.Sprintf("control_plane: a real etcd + kube-apiserver (%s) in a namespace of their own; each contender in a fresh node namespace joined to it by a veth on a bridge; %d rounds, one contender at a time in rotated order; "+
			"%d ClusterIP Services (one TCP port, no selector) with one EndpointSlice each of 1 to 10 ready endpoints (i%%10+1), written by the bench with the %s annotation, from %d goroutines at client QPS %.0f",
			cl.bins, c.CPRounds, c.CPServices, triggerAnnotation, c.CPWorkers, c.CPQPS),
		"control_plane programmed_after_created (a): once, with every contender running, each in its own node, while the objects are created: from the last create call returning to the end of the sync that programmed the last object; programmed_after_start (a'): in each round each contender alone, started fresh (empty datapath) with every object already in the API, from its process start to the end of that sync. " +
			"podpath: its gauges podpath_services_programmed and podpath_endpoints_programmed reach the counts, and the time is that of the agent's last \"services synced\" log line (ms); " +
			"kube-proxy: every change received (sync_proxy_rules_endpoint_changes_total and service_changes_total), none pending (the *_changes_pending gauges) and sync_proxy_rules_last_timestamp_seconds not before sync_proxy_rules_last_queued_timestamp_seconds: the time is last_timestamp. (a) below 1 ms (podpath's log resolution; it can even be negative, the watch event beating the create call's response) is recorded as 1 ms, the measured value in the extra measured_s, so a ratio against it is a lower bound. " +
			"Either way the datapath is then counted: podpath's services map frontends, kube-proxy's KUBE-SERVICES jumps to KUBE-SVC chains (iptables) or the service-ips map's elements (nftables) must be the Services created",
		fmt.Sprintf("control_plane changes: %d in all over the rounds, the same services for every contender, one at a time: the first endpoint of a slice replaced by a new address, trigger time set just before the update; latency = the growth of the contender's own network programming histogram sum (podpath_network_programming_duration_seconds, kubeproxy_network_programming_duration_seconds{ip_family=IPv4}), sync work = the growth of its sync duration histogram sum (podpath_sync_duration_seconds, kubeproxy_sync_proxy_rules_duration_seconds{ip_family=IPv4}), from a scrape before the change to one after both grew; %v between changes. p50/p99 over all changes, nearest rank; per-round percentiles give the spread",
			c.CPChanges, c.CPSpacing),
		fmt.Sprintf("control_plane settings: every contender --min-sync-period %v (kube-proxy's default is 1 s, podpath's 1 s); podpath --sync-period 1h, as kube-proxy's full resync (FullSyncPeriod, 1 h, not configurable); kube-proxy iptables mode uses the legacy backend (iptables, iptables-save, iptables-restore on its PATH point at the -legacy binaries, as the services family), nftables mode nft %s; kube-proxy conntrack sysctls left alone (maxPerCore 0, timeouts 0); podpath's agent with --no-socket-lb, its uplink eth0 on the bridge",
			c.CPMinSync, nftVersion()),
	}
}

// srcState names the commit the source tree is at and the files of the
// agent's packages that differ from it.
func srcState(benchDir string) string {
	root := filepath.Dir(benchDir)
	head, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "(not a git checkout)"
	}
	out, _ := exec.Command("git", "-C", root, "status", "--porcelain", "--", "agent", "services", "maps", "loader", "bpf", "cmd", "internal/sim").Output()
	dirty := strings.Join(strings.Fields(strings.ReplaceAll(string(out), "\n", " ")), " ")
	if dirty == "" {
		dirty = "none"
	}
	return fmt.Sprintf("commit %s, uncommitted changes to the agent's packages: %s", strings.TrimSpace(string(head)), dirty)
}

func nftVersion() string {
	out, err := exec.Command("nft", "--version").Output()
	if err != nil {
		return "(not found)"
	}
	return strings.TrimSpace(string(out))
}

// controlPlaneTargets: podpath's sync work per change under 5 ms, and
// kube-proxy taking at least 10 times podpath's time for (a) and (b).
func controlPlaneTargets(r *results) {
	n := r.Config.CPServices
	for _, p := range []string{"p50", "p99"} {
		m := r.find(famControlPlane, "sync_per_change_"+p, cPodpath)
		if m == nil {
			continue
		}
		r.Targets = append(r.Targets, target{
			Name: fmt.Sprintf("control plane: podpath sync work per EndpointSlice change, %s, %d Services", p, n),
			Want: "< 5 ms (ratio: value / 5 ms)", Ratio: round3(m.Median / 5), Pass: m.Median < 5,
			Detail: fmt.Sprintf("%s ms over %v changes, per round %v", formatValue(m.Median), m.Extra["changes"], m.Extra["per_round"]),
		})
	}
	for _, kp := range []string{cpKPIptables, cpKPNftables} {
		for _, g := range []struct{ metric, label string }{
			{"programmed_after_created", "(a) all created to all programmed (once, contenders concurrent)"},
			{"programmed_after_start", "(a') started with all objects to all programmed"},
			{"change_latency_p50", "(b) one EndpointSlice change, p50 latency"},
			{"change_latency_p99", "(b) one EndpointSlice change, p99 latency"},
		} {
			num, den := r.find(famControlPlane, g.metric, kp), r.find(famControlPlane, g.metric, cPodpath)
			name := fmt.Sprintf("control plane: %s, %s vs podpath, %d Services", g.label, kp, n)
			r.compareTarget(name, ">= 10x (podpath 10x faster)", num, den, kp, cPodpath, func(x float64) bool { return x >= 10 })
			if len(r.Targets) == 0 || r.Targets[len(r.Targets)-1].Name != name {
				continue
			}
			if g.metric == "programmed_after_created" && den.Median <= cpResolution {
				r.Targets[len(r.Targets)-1].Detail += "; podpath at the 1 ms floor (measured " + fmt.Sprint(den.Extra["measured_s"]) + " s): the ratio is a lower bound"
			}
			if g.metric == "programmed_after_start" {
				if p := pairedRatios(num, den); p != "" {
					r.Targets[len(r.Targets)-1].Detail += "; " + p
				}
			} else if lo, hi, ok := roundRatios(num, den); ok {
				r.Targets[len(r.Targets)-1].Detail += fmt.Sprintf("; per round %.1fx-%.1fx", lo, hi)
			}
		}
	}
}

// roundRatios is the range of num/den over rounds, from the per-round
// percentiles.
func roundRatios(num, den *measurement) (lo, hi float64, ok bool) {
	a, b := num.Extra["per_round"], den.Extra["per_round"]
	if len(a) == 0 || len(a) != len(b) {
		return 0, 0, false
	}
	lo, hi = math.Inf(1), math.Inf(-1)
	for i := range a {
		x, _ := a[i].(float64)
		y, _ := b[i].(float64)
		if y <= 0 {
			return 0, 0, false
		}
		lo, hi = math.Min(lo, x/y), math.Max(hi, x/y)
	}
	return lo, hi, true
}

// controlPlaneSummary is the family's table: one column per contender.
func controlPlaneSummary(r *results) string {
	var b strings.Builder
	var contenders []string
	for _, s := range cpSpecs() {
		if r.find(famControlPlane, "programmed_after_created", s.contender) != nil || r.find(famControlPlane, "programmed_after_start", s.contender) != nil {
			contenders = append(contenders, s.contender)
		}
	}
	if len(contenders) == 0 {
		return ""
	}
	c := r.Config
	fmt.Fprintf(&b, "%d Services, 1 to 10 endpoints each, against a real kube-apiserver; (a') and (b): each contender alone on the machine in its turn, %d rounds (rotated order); %d EndpointSlice changes one at a time. "+
		"(a): once; (a'): median (min-max) over rounds; (b): over all changes, the per-round range in brackets. Ratios: kube-proxy's figure over podpath's, with the range of the per-round ratios.\n\n", c.CPServices, c.CPRounds, c.CPChanges)
	b.WriteString("| |")
	for _, k := range contenders {
		fmt.Fprintf(&b, " %s |", k)
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(contenders)) + "\n")
	row := func(label string, cell func(contender string) string) {
		fmt.Fprintf(&b, "| %s |", label)
		for _, k := range contenders {
			fmt.Fprintf(&b, " %s |", cell(k))
		}
		b.WriteString("\n")
	}
	get := func(metric, k string) *measurement { return r.find(famControlPlane, metric, k) }
	med := func(metric string) func(string) string {
		return func(k string) string {
			m := get(metric, k)
			if m == nil {
				return "not measured"
			}
			if len(m.Reps) == 1 {
				return formatValue(m.Median)
			}
			return fmt.Sprintf("%s (%s-%s)", formatValue(m.Median), formatValue(m.Min), formatValue(m.Max))
		}
	}
	vs := func(metric string, spread func(num, den *measurement) (lo, hi float64, ok bool)) func(string) string {
		return func(k string) string {
			num, den := get(metric, k), get(metric, cPodpath)
			if k == cPodpath || num == nil || den == nil {
				return "-"
			}
			s := ratioCell(num, den)
			if lo, hi, ok := spread(num, den); ok {
				s += fmt.Sprintf(" (%.1fx-%.1fx)", lo, hi)
			}
			return s
		}
	}
	row("(a) all created to all programmed, s (once, every contender running)", med("programmed_after_created"))
	row("(a) vs podpath", func(k string) string {
		c := vs("programmed_after_created", repRatios)(k)
		if den := get("programmed_after_created", cPodpath); c != "-" && den != nil && den.Median <= cpResolution {
			c = ">=" + c + " (podpath at the 1 ms floor)"
		}
		return c
	})
	row("(a') started with every object to all programmed, s", med("programmed_after_start"))
	row("(a') vs podpath (per round)", vs("programmed_after_start", repRatios))
	pct := func(metric string) func(string) string {
		return func(k string) string {
			m := get(metric, k)
			if m == nil {
				return "not measured"
			}
			return fmt.Sprintf("%s (%s)", formatValue(m.Median), roundRange(m))
		}
	}
	row("(b) change latency p50, ms", pct("change_latency_p50"))
	row("(b) change latency p99, ms", pct("change_latency_p99"))
	row("(b) p50 vs podpath", vs("change_latency_p50", roundRatios))
	row("(b) p99 vs podpath", vs("change_latency_p99", roundRatios))
	row("sync work per change p50, ms", pct("sync_per_change_p50"))
	row("sync work per change p99, ms", pct("sync_per_change_p99"))
	row("sync work p50 vs podpath", vs("sync_per_change_p50", roundRatios))
	row("syncs per change (max)", func(k string) string {
		m := get("sync_per_change", k)
		if m == nil {
			return "-"
		}
		most := 0.0
		for _, v := range m.Extra["syncs"] {
			f, _ := v.(float64)
			most = math.Max(most, f)
		}
		return formatValue(most)
	})
	b.WriteString("\n")
	return b.String()
}

// repRatios is the range of num/den repetition by repetition (each pair
// from the same round), when there are several.
func repRatios(num, den *measurement) (lo, hi float64, ok bool) {
	var rs []float64
	for i := range min(len(num.Reps), len(den.Reps)) {
		if den.Reps[i] > 0 {
			rs = append(rs, num.Reps[i]/den.Reps[i])
		}
	}
	if len(rs) < 2 {
		return 0, 0, false
	}
	lo, _, hi = minMedMax(rs)
	return lo, hi, true
}

// roundRange is "lo-hi" of a percentile's per-round values.
func roundRange(m *measurement) string {
	var vs []float64
	for _, v := range m.Extra["per_round"] {
		if f, ok := v.(float64); ok {
			vs = append(vs, f)
		}
	}
	if len(vs) == 0 {
		return "-"
	}
	lo, _, hi := minMedMax(vs)
	return formatValue(lo) + "-" + formatValue(hi)
}

// controlPlanePanels: (a), the change latency and the sync work per change.
func controlPlanePanels(r *results) []panel {
	ms := r.family(famControlPlane)
	if len(ms) == 0 {
		return nil
	}
	contenders := uniq(ms, func(m *measurement) string { return m.Contender })
	get := func(g, s string) *measurement { return r.find(famControlPlane, g, s) }
	vsPodpath := func(g, s string) string {
		m, base := get(g, s), get(g, cPodpath)
		if s == cPodpath || m == nil || base == nil || base.Median == 0 {
			return ""
		}
		if g == "programmed_after_created" && base.Median <= cpResolution {
			return fmt.Sprintf(">=%.0fx podpath", m.Median/base.Median)
		}
		return fmt.Sprintf("%.0fx podpath", m.Median/base.Median)
	}
	n := r.Config.CPServices
	return []panel{
		{title: fmt.Sprintf("%d Services: to all programmed (lower is better)", n), unit: "s",
			groups: []string{"programmed_after_created", "programmed_after_start"}, series: contenders, get: get, ratio: vsPodpath},
		{title: fmt.Sprintf("(b) one EndpointSlice change to programmed, %d Services", n), unit: "ms",
			groups: []string{"change_latency_p50", "change_latency_p99"}, series: contenders, get: get, ratio: vsPodpath},
		{title: "sync work per change (lower is better)", unit: "ms",
			groups: []string{"sync_per_change_p50", "sync_per_change_p99"}, series: contenders, get: get, ratio: vsPodpath},
	}
}
