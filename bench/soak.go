package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// The soak family: new masqueraded connections from one pod to a host
// outside the node, as fast as this machine sets them up, for SoakTime
// (10 minutes), through the snat family's podpath topology. No agent runs:
// nothing reaps the snat map and nothing else frees a port, so the
// datapath alone must keep finding ports and map room for new flows. Every
// SoakInterval it samples what the clients achieved and what the datapath
// counted; once the rate is steady no new flow may be dropped for lack of a
// port or of map space and no connection may fail.
//
// Each client is crrClient (connect, 1 byte each way, close with RST) on a
// thread in the pod, with a server thread of its own outside. The pod's
// kernel picks each connection's source port from its ephemeral range; a
// source port used again while its forward half still lives (10 s after
// the reset) keeps that mapping's node port, and any other connection
// takes a node port from the SNAT range, where a reset connection's port is
// free at once. Either way the snat map holds at most one forward half per
// pod port and one reverse half per node port, whatever the rate; the
// share of connections that needed a new port is in the summary.

// famSoak is the family's name.
const famSoak = "soak"

// defaultSoakClients is the clients the soak runs unless told: one per CPU,
// and at least two, since one client leaves the machine idle while it
// waits on its own round trips. On this 2-CPU machine, shared with other
// work, medians of two 30 s rounds were 3,400-3,800 connections a second
// with one client, 5,000-5,300 with two, 5,100-5,400 with three,
// 5,200-5,500 with four and 4,500-5,200 with six: past one per CPU the
// clients only compete for the CPUs, within the machine's noise.
func defaultSoakClients() int { return max(2, runtime.NumCPU()) }

// steadyAfter is when a soak of duration d counts as steady: after 60 s (a
// quarter of a run shorter than 4 minutes). By then the pod's ephemeral
// ports and the node's SNAT ports have each gone round many times at
// thousands of connections a second, so the snat map holds as many
// mappings as it ever will (the soak records when it stopped growing), and
// the rate reflects the machine, not the start.
func steadyAfter(d time.Duration) time.Duration {
	if d < 4*time.Minute {
		return d / 4
	}
	return time.Minute
}

// soakRun is the soak's record in the results: settings, what the server
// saw, and one entry per sampling window.
type soakRun struct {
	Clients    int     `json:"clients"`
	IntervalS  float64 `json:"intervalSeconds"`
	SteadyS    float64 `json:"steadyAfterSeconds"`
	LoadStart  string  `json:"loadAverageAtStart"`
	LoadEnd    string  `json:"loadAverageAtEnd"`
	WantPeer   string  `json:"serverMustSee"`
	ServerSaw  string  `json:"serverSawClient"`
	OtherPeers int     `json:"connectionsFromElsewhere"`
	// MapGrewUntilS is the end of the last window in which the snat map
	// gained more than 1% of its final entries.
	MapGrewUntilS float64      `json:"snatMapGrewUntilSeconds"`
	Windows       []soakWindow `json:"windows"`
}

// soakWindow is one sampling window: the clients' figures over it, the
// datapath counters that rose in it, and the snat map at its end.
type soakWindow struct {
	EndS        float64 `json:"endSeconds"`
	Steady      bool    `json:"steady"`
	Connections int     `json:"connections"`
	Rate        float64 `json:"connectionsPerSecond"`
	Failed      int     `json:"failedConnections"`
	// NAT: nat_stats that rose (allocated, retries, reused_expired,
	// reused_reset, no_port, map_full); Drops: drop counters that rose,
	// hook/reason.
	NAT          map[string]uint64 `json:"natStats"`
	Drops        map[string]uint64 `json:"drops"`
	SNATPackets  uint64            `json:"toNetdevSNATPackets"`
	BacklogDrops uint64            `json:"softnetBacklogDrops"`
	// Map: the snat map's halves (forward/reverse, live/reset/expired),
	// its max_entries and the SNAT port range.
	Map  map[string]uint64 `json:"snatMap"`
	Load string            `json:"loadAverage"`
}

// soakSample is the datapath's counters at one moment.
type soakSample struct {
	extra   map[string]uint64
	snat    uint64
	backlog uint64
}

func soakSampleOf(t *topology) (soakSample, error) {
	s := soakSample{extra: t.extras()}
	s.backlog, _ = softnetStat()
	var err error
	s.snat, err = t.path.read()
	return s, err
}

func (e *env) runSoak(ctx context.Context) (err error) {
	cfg := e.cfg
	t, err := e.snatPodpathTopology(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := t.close(); cerr != nil {
			slog.Warn("close", "family", famSoak, "err", cerr)
		}
	}()
	e.recordTopology(ctx, famSoak+" "+t.contender, t)
	run := &soakRun{Clients: cfg.SoakClients, IntervalS: cfg.SoakInterval.Seconds(), SteadyS: cfg.SoakSteady.Seconds(),
		WantPeer: t.wantPeer.String()}
	e.res.Soak = run
	e.res.Notes = append(e.res.Notes, fmt.Sprintf("soak: %d TCP_CRR clients (crrClient: connect, 1 byte each way, close with RST) in one pod, each with a server thread of its own in the outside host, for %v; "+
		"sampled every %v; steady from %v on; no agent runs (nothing reaps the snat map); pass: after steady no drop_nat_no_port or drop_nat_map_full and no failed connection "+
		"(not set up or not answered within %v), the server saw only the node's address and to_netdev masqueraded",
		cfg.SoakClients, cfg.SoakTime, cfg.SoakInterval, cfg.SoakSteady, ioTimeout))

	srv, err := startServer(t, cfg.SoakClients)
	if err != nil {
		return err
	}
	defer srv.stop()

	windows := int(cfg.SoakTime / cfg.SoakInterval)
	prev, err := soakSampleOf(t)
	if err != nil {
		return err
	}
	run.LoadStart = loadAvg()
	slog.Info("soak", "clients", cfg.SoakClients, "for", cfg.SoakTime, "windows", windows, "load", run.LoadStart)
	start := time.Now()
	windowEnd := func(w int) time.Time { return start.Add(time.Duration(w+1) * cfg.SoakInterval) }

	// Every client runs crrClient once per window, up to the window's
	// end, so all windows share their boundaries with the sampler.
	got := make([][]rrResult, cfg.SoakClients)
	errs := make([]error, cfg.SoakClients)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for c := range cfg.SoakClients {
		got[c] = make([]rrResult, windows)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[c] = t.client.Do(func() error {
				for w := range windows {
					d := time.Until(windowEnd(w))
					if d <= 0 {
						continue // a connection outlasted the window
					}
					r, err := crrClient(cctx, srv.dst, 0, d, true)
					if err != nil {
						return fmt.Errorf("client %d, window %d: %w", c+1, w+1, err)
					}
					got[c][w] = r
				}
				return nil
			})
			if errs[c] != nil {
				cancel()
			}
		}()
	}

	for w := range windows {
		select {
		case <-cctx.Done():
		case <-time.After(time.Until(windowEnd(w))):
		}
		if cctx.Err() != nil {
			break
		}
		cur, err := soakSampleOf(t)
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		win := soakWindow{
			EndS:   math.Round(time.Since(start).Seconds()*10) / 10,
			Steady: time.Duration(w)*cfg.SoakInterval >= cfg.SoakSteady,
			NAT:    map[string]uint64{}, Drops: map[string]uint64{},
			SNATPackets: cur.snat - prev.snat, BacklogDrops: cur.backlog - prev.backlog,
			Map: t.state(), Load: loadAvg(),
		}
		for k, v := range rose(prev.extra, cur.extra) {
			if name, ok := strings.CutPrefix(k, "nat_"); ok {
				win.NAT[name] = v
			} else {
				win.Drops[k] = v
			}
		}
		run.Windows = append(run.Windows, win)
		prev = cur
		slog.Info("soak", "t", fmt.Sprintf("%.0fs", win.EndS), "snat_pkts", win.SNATPackets, "nat", win.NAT, "drops", win.Drops,
			"snat_map", soakMapLine(win.Map), "load", win.Load)
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	run.LoadEnd = loadAvg()
	peers, err := srv.stop()
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	run.ServerSaw, run.OtherPeers = peers.first.String(), peers.others

	for w := range run.Windows {
		win := &run.Windows[w]
		for c := range got {
			win.Connections += got[c][w].count
			win.Failed += got[c][w].failed
		}
		win.Rate = math.Round(float64(win.Connections) / cfg.SoakInterval.Seconds())
		if win.Steady {
			e.res.record(famSoak, "steady_rate", t.contender, "connections/s", higher, win.Rate)
		}
		slog.Debug("soak window", "t", win.EndS, "rate", win.Rate, "failed", win.Failed)
	}
	run.MapGrewUntilS = mapGrewUntil(run.Windows)
	return nil
}

// soakMapLine is the snat map in a few words for the log.
func soakMapLine(m map[string]uint64) string {
	return fmt.Sprintf("fwd %d live (%d reset) %d expired, rev %d live (%d reset) %d expired, of %d",
		m["forward_live"], m["forward_reset"], m["forward_expired"], m["reverse_live"], m["reverse_reset"], m["reverse_expired"], m["max_entries"])
}

// mapEntries is a snat map sample's entries, both halves.
func mapEntries(m map[string]uint64) uint64 {
	return m["forward_live"] + m["forward_expired"] + m["reverse_live"] + m["reverse_expired"]
}

// mapGrewUntil is the end of the last window in which the snat map grew by
// more than 1% of its final size.
func mapGrewUntil(ws []soakWindow) float64 {
	if len(ws) == 0 {
		return 0
	}
	final := float64(mapEntries(ws[len(ws)-1].Map))
	until, last := 0.0, 0.0
	for _, w := range ws {
		n := float64(mapEntries(w.Map))
		if n-last > final/100 {
			until = w.EndS
		}
		last = n
	}
	return until
}

// soakTally is what the soak's windows add up to, before and after steady.
type soakTally struct {
	windows, connections, failed int
	noPort, mapFull, otherDrops  uint64
	snat                         uint64
	nat                          map[string]uint64
	rates                        []float64
}

func tallySoak(ws []soakWindow, steady bool) soakTally {
	t := soakTally{nat: map[string]uint64{}}
	for _, w := range ws {
		if w.Steady != steady {
			continue
		}
		t.windows++
		t.connections += w.Connections
		t.failed += w.Failed
		t.snat += w.SNATPackets
		t.rates = append(t.rates, w.Rate)
		for k, v := range w.NAT {
			t.nat[k] += v
		}
		for k, v := range w.Drops {
			switch {
			case strings.HasSuffix(k, "/drop_nat_no_port"):
				t.noPort += v
			case strings.HasSuffix(k, "/drop_nat_map_full"):
				t.mapFull += v
			default:
				t.otherDrops += v
			}
		}
	}
	return t
}

// soakTargets judges the soak: once steady, no new flow dropped for lack
// of a port or of map space and no connection failed; the server saw only
// the node's address and to_netdev masqueraded. The ratio is those drops
// and failures per steady connection.
func soakTargets(r *results) {
	s := r.Soak
	if s == nil {
		return
	}
	st, warm := tallySoak(s.Windows, true), tallySoak(s.Windows, false)
	bad := st.noPort + st.mapFull + uint64(st.failed)
	ratio := 0.0
	if st.connections > 0 {
		ratio = float64(bad) / float64(st.connections)
	}
	lo, med, hi := minMedMax(st.rates)
	detail := fmt.Sprintf("from %.0f s, %d windows: %d connections, %s/s median (%s-%s); drop_nat_no_port %d, drop_nat_map_full %d, failed %d, other drops %d; "+
		"before: drop_nat_no_port %d, drop_nat_map_full %d, failed %d; server saw %s (%d from elsewhere, want %s)",
		s.steadyFromS(), st.windows, st.connections, formatValue(med), formatValue(lo), formatValue(hi), st.noPort, st.mapFull, st.failed, st.otherDrops,
		warm.noPort, warm.mapFull, warm.failed, s.ServerSaw, s.OtherPeers, s.WantPeer)
	pass := st.windows > 0 && st.connections > 0 && bad == 0 && st.snat+warm.snat > 0 &&
		s.ServerSaw == s.WantPeer && s.OtherPeers == 0
	if st.snat+warm.snat == 0 {
		detail += "; to_netdev masqueraded nothing"
	}
	r.Targets = append(r.Targets, target{
		Name: fmt.Sprintf("soak: %d clients for %.0f s, no new flow dropped for lack of ports or map space and no failed connection once steady", s.Clients, s.endS()),
		Want: "0 (drops and failures per steady connection)", Ratio: ratio, Pass: pass, Detail: detail,
	})
}

// steadyFromS is the start of the first steady window (the end of the
// last one when none is).
func (s *soakRun) steadyFromS() float64 {
	for _, w := range s.Windows {
		if w.Steady {
			return w.EndS - s.IntervalS
		}
	}
	return s.endS()
}

func (s *soakRun) endS() float64 {
	if len(s.Windows) == 0 {
		return 0
	}
	return s.Windows[len(s.Windows)-1].EndS
}

// soakVerdict fails the run when a soak in it did not pass, after its
// results are written.
func soakVerdict(r *results) error {
	for _, t := range r.Targets {
		if strings.HasPrefix(t.Name, famSoak+":") && !t.Pass {
			return fmt.Errorf("soak did not pass: %s", t.Detail)
		}
	}
	return nil
}

// soakSummary is the soak's section of latest.md: the figures to quote,
// then every window.
func soakSummary(r *results) string {
	s := r.Soak
	if s == nil {
		return ""
	}
	var b strings.Builder
	st, warm := tallySoak(s.Windows, true), tallySoak(s.Windows, false)
	lo, med, hi := minMedMax(st.rates)
	fmt.Fprintf(&b, "%d TCP_CRR clients in one pod to a host outside the node, masqueraded by podpath, for %.0f s, sampled every %.0f s; no agent (nothing reaps the snat map). "+
		"Steady once %.0f s have passed: the windows from %.0f s on; the snat map last grew by more than 1%% in the window ending at %.0f s. Load average at the start %s, at the end %s.\n\n",
		s.Clients, s.endS(), s.IntervalS, s.SteadyS, s.steadyFromS(), s.MapGrewUntilS, s.LoadStart, s.LoadEnd)
	fmt.Fprintf(&b, "| | 0-%.0f s | steady, %.0f-%.0f s |\n|---|---|---|\n", s.steadyFromS(), s.steadyFromS(), s.endS())
	row := func(name string, f func(soakTally) string) {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", name, f(warm), f(st))
	}
	row("connections", func(t soakTally) string { return fmt.Sprint(t.connections) })
	row("connections/s median (min-max over windows)", func(t soakTally) string {
		lo, med, hi := minMedMax(t.rates)
		return fmt.Sprintf("%s (%s-%s)", formatValue(med), formatValue(lo), formatValue(hi))
	})
	row("connections that took a new node port (nat allocated)", func(t soakTally) string {
		if t.connections == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f%%", 100*float64(t.nat["allocated"])/float64(t.connections))
	})
	row("failed connections", func(t soakTally) string { return fmt.Sprint(t.failed) })
	row("drop_nat_no_port", func(t soakTally) string { return fmt.Sprint(t.noPort) })
	row("drop_nat_map_full", func(t soakTally) string { return fmt.Sprint(t.mapFull) })
	row("other drops", func(t soakTally) string { return fmt.Sprint(t.otherDrops) })
	for _, k := range []string{"allocated", "retries", "reused_reset", "reused_expired", "no_port", "map_full"} {
		row("nat "+k, func(t soakTally) string { return fmt.Sprint(t.nat[k]) })
	}
	if n := len(s.Windows); n > 0 {
		fmt.Fprintf(&b, "\nsnat map at the end: %s. Steady rate: median %s, min %s, max %s connections/s. The server saw %s (%d connections from elsewhere).\n\n",
			soakMapLine(s.Windows[n-1].Map), formatValue(med), formatValue(lo), formatValue(hi), s.ServerSaw, s.OtherPeers)
	}
	b.WriteString("Every window (counters that rose in it; the snat map at its end):\n\n" +
		"| end s | steady | conn/s | failed | allocated | reused_reset | reused_expired | retries | no_port | map_full | drops | fwd live (reset) | fwd expired | rev live (reset) | rev expired | load |\n" +
		"|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, w := range s.Windows {
		var drops []string
		for _, k := range slices.Sorted(maps.Keys(w.Drops)) {
			drops = append(drops, fmt.Sprintf("%s %d", k, w.Drops[k]))
		}
		m := w.Map
		fmt.Fprintf(&b, "| %.0f | %t | %.0f | %d | %d | %d | %d | %d | %d | %d | %s | %d (%d) | %d | %d (%d) | %d | %s |\n",
			w.EndS, w.Steady, w.Rate, w.Failed, w.NAT["allocated"], w.NAT["reused_reset"], w.NAT["reused_expired"], w.NAT["retries"],
			w.NAT["no_port"], w.NAT["map_full"], strings.Join(drops, ", "), m["forward_live"], m["forward_reset"], m["forward_expired"],
			m["reverse_live"], m["reverse_reset"], m["reverse_expired"], w.Load)
	}
	b.WriteString("\n")
	return b.String()
}

// soakPanels: the rate, the snat map's entries and what the NAT allocator
// did, over the soak.
func soakPanels(r *results) []chartPanel {
	s := r.Soak
	if s == nil || len(s.Windows) == 0 {
		return nil
	}
	x := make([]float64, len(s.Windows))
	for i, w := range s.Windows {
		x[i] = w.EndS
	}
	of := func(name string, dashed bool, v func(soakWindow) float64) series {
		y := make([]float64, len(s.Windows))
		for i, w := range s.Windows {
			y[i] = v(w)
		}
		return series{name: name, x: x, y: y, dashed: dashed}
	}
	perSecond := func(v uint64) float64 { return float64(v) / s.IntervalS }
	mapped := func(k string) func(soakWindow) float64 {
		return func(w soakWindow) float64 { return float64(w.Map[k]) }
	}
	nat := func(k string) func(soakWindow) float64 {
		return func(w soakWindow) float64 { return perSecond(w.NAT[k]) }
	}
	mark := s.steadyFromS()
	label := fmt.Sprintf("steady from %.0f s", mark)
	xLabel := "seconds since the soak started"
	return []chartPanel{
		seriesPanel{title: "new masqueraded connections (higher is better)", unit: "connections/s", xLabel: xLabel, mark: mark, markLabel: label,
			series: []series{of(fmt.Sprintf("%d clients", s.Clients), false, func(w soakWindow) float64 { return w.Rate })}},
		seriesPanel{title: "snat map entries at each sample", unit: "entries", xLabel: xLabel, mark: mark, markLabel: label,
			series: []series{
				of("all", false, func(w soakWindow) float64 { return float64(mapEntries(w.Map)) }),
				of("forward live", false, mapped("forward_live")), of("forward expired", false, mapped("forward_expired")),
				of("reverse live", false, mapped("reverse_live")), of("reverse expired", false, mapped("reverse_expired")),
				of("max entries", true, mapped("max_entries")),
			}},
		seriesPanel{title: "NAT allocator and failures (drops and failures: want 0)", unit: "per second", xLabel: xLabel, mark: mark, markLabel: label,
			series: []series{
				of("allocated", false, nat("allocated")), of("port of a reset connection", false, nat("reused_reset")),
				of("port of an expired mapping", false, nat("reused_expired")), of("ports tried and taken", false, nat("retries")),
				of("dropped: no port or map full", false, func(w soakWindow) float64 { return perSecond(w.NAT["no_port"] + w.NAT["map_full"]) }),
				of("failed connections", false, func(w soakWindow) float64 { return perSecond(uint64(w.Failed)) }),
			}},
	}
}
