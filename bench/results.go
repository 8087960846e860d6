package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Measurement families: one chart each.
const (
	famStream  = "tcp_stream"
	famRR      = "tcp_rr"
	famCRR     = "tcp_crr"
	famProgRun = "bpf_prog_run"
	famCNI     = "cni"
	famMemory  = "memory"
	// famServices: a pod reaching a ClusterIP with N services programmed.
	famServices = "services"
	// famSNAT: a pod reaching a host outside, masqueraded.
	famSNAT = "snat"
)

// Which way is better for a metric.
const (
	higher = "higher"
	lower  = "lower"
)

// results is everything one run found; it is written as latest.json.
type results struct {
	Machine   machine `json:"machine"`
	Config    config  `json:"config"`
	DurationS float64 `json:"durationSeconds"`
	// FamilyS is how long each family took, in the order they ran.
	FamilyS      []familyTime            `json:"familySeconds,omitempty"`
	Topologies   map[string]topologyInfo `json:"topologies,omitempty"`
	Measurements []*measurement          `json:"measurements"`
	Targets      []target                `json:"targets,omitempty"`
	// Soak is the soak's run, window by window, when it ran.
	Soak  *soakRun `json:"soak,omitempty"`
	Notes []string `json:"notes,omitempty"`
}

type familyTime struct {
	Family  string  `json:"family"`
	Seconds float64 `json:"seconds"`
}

// measurement is one metric of one contender over every repetition.
type measurement struct {
	Family    string    `json:"family"`
	Metric    string    `json:"metric"`
	Contender string    `json:"contender"`
	Unit      string    `json:"unit"`
	Better    string    `json:"better"`
	Reps      []float64 `json:"repetitions"`
	Min       float64   `json:"min"`
	Median    float64   `json:"median"`
	Max       float64   `json:"max"`
	// Extra holds evidence per repetition: retransmits, eBPF counter
	// deltas, sample counts.
	Extra map[string][]any `json:"extra,omitempty"`
	// Failed are the repetitions that gave no value, with why: the run
	// goes on without them, and Reps holds the others in order.
	Failed []failedRep `json:"failedRepetitions,omitempty"`
}

// failedRep is a repetition that failed: its attempt (0 for the first
// repetition of the measurement) and the error, evidence included.
type failedRep struct {
	Attempt int    `json:"attempt"`
	Error   string `json:"error"`
}

// maxFailedShare is the share of failed repetitions above which a
// measurement is unreliable: shown as such and not compared.
const maxFailedShare = 1.0 / 3

// unreliable tells whether too many repetitions failed to trust the rest.
func (m *measurement) unreliable() bool {
	n := len(m.Reps) + len(m.Failed)
	return n > 0 && float64(len(m.Failed)) > maxFailedShare*float64(n)
}

// attempts maps each attempt that gave a value to it.
func (m *measurement) attempts() map[int]float64 {
	out := map[int]float64{}
	failed := map[int]bool{}
	for _, f := range m.Failed {
		failed[f.Attempt] = true
	}
	i := 0
	for a := 0; i < len(m.Reps); a++ {
		if !failed[a] {
			out[a] = m.Reps[i]
			i++
		}
	}
	return out
}

// record appends one repetition of a metric, creating the measurement on
// first use.
func (r *results) record(family, metric, contender, unit, better string, v float64) *measurement {
	m := r.find(family, metric, contender)
	if m == nil {
		m = &measurement{Family: family, Metric: metric, Contender: contender, Unit: unit, Better: better}
		r.Measurements = append(r.Measurements, m)
	}
	m.Reps = append(m.Reps, v)
	m.Min, m.Median, m.Max = minMedMax(m.Reps)
	return m
}

// recordFailure notes a repetition of each metric that gave no value, so
// the run goes on and the results show it.
func (r *results) recordFailure(family, contender, unit, better string, err error, metrics ...string) {
	for _, metric := range metrics {
		m := r.find(family, metric, contender)
		if m == nil {
			m = &measurement{Family: family, Metric: metric, Contender: contender, Unit: unit, Better: better}
			r.Measurements = append(r.Measurements, m)
		}
		m.Failed = append(m.Failed, failedRep{Attempt: len(m.Reps) + len(m.Failed), Error: err.Error()})
	}
	slog.Warn("repetition failed; the run goes on without it", "family", family, "contender", contender, "metrics", metrics, "err", err)
}

// addExtra appends a piece of per-repetition evidence.
func (m *measurement) addExtra(key string, v any) {
	if m.Extra == nil {
		m.Extra = map[string][]any{}
	}
	m.Extra[key] = append(m.Extra[key], v)
}

func (r *results) find(family, metric, contender string) *measurement {
	for _, m := range r.Measurements {
		if m.Family == family && m.Metric == metric && m.Contender == contender {
			return m
		}
	}
	return nil
}

// median returns the median of a metric, NaN when it was not measured.
func (r *results) median(family, metric, contender string) float64 {
	if m := r.find(family, metric, contender); m != nil && len(m.Reps) > 0 {
		return m.Median
	}
	return math.NaN()
}

func (r *results) finish(start time.Time) {
	r.DurationS = math.Round(time.Since(start).Seconds()*10) / 10
	r.Machine.LoadAfter = loadAvg()
}

func writeResults(r *results, dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "latest.json.tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "latest.json"))
}

func minMedMax(v []float64) (lo, med, hi float64) {
	if len(v) == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return s[0], med, s[n-1]
}

// percentile of sorted samples, nearest rank.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// target is one goal evaluated on this run's medians.
type target struct {
	Name   string  `json:"name"`
	Ratio  float64 `json:"ratio"`
	Want   string  `json:"want"`
	Pass   bool    `json:"pass"`
	Detail string  `json:"detail"`
	// Paired, when set, is the ratio repetition by repetition; Ratio is
	// then its median and Pass asks the whole interval to clear the bar.
	Paired *pairedInterval `json:"paired,omitempty"`
}

// evaluateTargets checks the goals podpath set itself, each a ratio of two
// medians from this one run.
func evaluateTargets(r *results) {
	type goal struct {
		name            string
		family, metric  string
		num, den        string
		atLeast, atMost float64
		want            string
	}
	goals := []goal{
		{name: "TCP throughput vs limit", family: famStream, metric: "throughput", num: cPodpath, den: cLimit, atLeast: 0.9, want: ">= 0.90x"},
		{name: "TCP throughput vs bridge", family: famStream, metric: "throughput", num: cPodpath, den: cDocker, atLeast: 1.1, want: ">= 1.10x"},
		{name: "TCP_RR rate vs bridge", family: famRR, metric: "rate", num: cPodpath, den: cDocker, atLeast: 1.2, want: ">= 1.20x"},
		{name: "TCP_CRR rate vs bridge", family: famCRR, metric: "rate", num: cPodpath, den: cDocker, atLeast: 1.3, want: ">= 1.30x"},
		{name: "CNI ADD p50 (sequential) vs bridge+host-local", family: famCNI, metric: "add_seq_p50", num: cniPodpath, den: cniBridge, atMost: 1.0, want: "<= 1.00x"},
		{name: "CNI ADD p99 (sequential) vs bridge+host-local", family: famCNI, metric: "add_seq_p99", num: cniPodpath, den: cniBridge, atMost: 1.0, want: "<= 1.00x"},
		{name: "CNI ADD p50 (8 in parallel) vs bridge+host-local", family: famCNI, metric: "add_par_p50", num: cniPodpath, den: cniBridge, atMost: 1.0, want: "<= 1.00x"},
		{name: "CNI ADD p99 (8 in parallel) vs bridge+host-local", family: famCNI, metric: "add_par_p99", num: cniPodpath, den: cniBridge, atMost: 1.0, want: "<= 1.00x"},
	}
	for _, g := range goals {
		pass := func(x float64) bool { return x >= g.atLeast }
		if g.atMost > 0 {
			pass = func(x float64) bool { return x <= g.atMost }
		}
		r.compareTarget(g.name, g.want, r.find(g.family, g.metric, g.num), r.find(g.family, g.metric, g.den), g.num, g.den, pass)
	}
	serviceTargets(r)
	snatTargets(r)
	controlPlaneTargets(r)
	soakTargets(r)
	crossNodeTargets(r)
	progRunTargets(r)
	policyTargets(r)
}

// compareTarget adds a target on the ratio of num to den. Measured over
// several repetitions, the ratio is taken repetition by repetition and
// the target passes only if the whole 95% confidence interval of its mean
// passes; otherwise (one repetition) the medians' ratio is judged.
func (r *results) compareTarget(name, want string, num, den *measurement, numLabel, denLabel string, pass func(float64) bool) {
	if num == nil || den == nil || den.Median == 0 || math.IsNaN(num.Median) || math.IsNaN(den.Median) {
		return
	}
	medians := formatValue(num.Median) + " vs " + formatValue(den.Median) + " " + num.Unit + " (" + numLabel + " vs " + denLabel + ", medians)"
	if p, ok := paired(num, den); ok && p.N > 1 {
		r.Targets = append(r.Targets, target{
			Name: name, Ratio: round3(p.Median), Want: want + " (whole 95% interval)", Pass: pass(p.Lo) && pass(p.Hi), Paired: &p,
			Detail: fmt.Sprintf("per repetition: %s (%s); %s", p.describe(), p.verdict(num.Better), medians),
		})
		return
	}
	ratio := num.Median / den.Median
	r.Targets = append(r.Targets, target{Name: name, Ratio: round3(ratio), Want: want, Pass: pass(ratio), Detail: medians})
}

// serviceTargets: podpath's rate with the most services programmed stays
// within 5% of its rate with one, wherever the measured service is, and
// podpath is ahead of kube-proxy's iptables and nftables rules at every
// count and position.
func serviceTargets(r *results) {
	counts := serviceCounts(r)
	for _, kind := range []struct{ metric, label string }{{"rr_rate", "TCP_RR"}, {"crr_rate", "TCP_CRR"}} {
		if len(counts) > 1 {
			most := counts[len(counts)-1]
			den := r.find(famServices, fmt.Sprintf("%s@%d", kind.metric, 1), cPodpath)
			for _, pos := range svcPositions(most) {
				num := r.find(famServices, fmt.Sprintf("%s%s@%d", kind.metric, pos.suffix, most), cPodpath)
				r.compareTarget(fmt.Sprintf("services: podpath %s rate, %s (measured one %s) vs 1", kind.label, servicesLabel(most), pos.label),
					"0.95x-1.05x", num, den, servicesLabel(most), servicesLabel(1), func(x float64) bool { return x >= 0.95 && x <= 1.05 })
			}
		}
		for _, n := range counts {
			for _, pos := range svcPositions(n) {
				metric := fmt.Sprintf("%s%s@%d", kind.metric, pos.suffix, n)
				for _, peer := range []string{cIptables, cNftables} {
					where := ""
					if len(svcPositions(n)) > 1 {
						where = ", measured one " + pos.label
					}
					r.compareTarget(fmt.Sprintf("services: %s rate vs %s, %s%s", kind.label, peer, servicesLabel(n), where), "> 1.00x",
						r.find(famServices, metric, cPodpath), r.find(famServices, metric, peer), cPodpath, peer,
						func(x float64) bool { return x > 1 })
				}
			}
		}
	}
}

// pairedRatios describes the ratios of two measurements repetition by
// repetition (each pair measured in the same round of the interleaving),
// which drift between rounds does not move.
func pairedRatios(num, den *measurement) string {
	p, ok := paired(num, den)
	if !ok {
		return ""
	}
	return "per repetition: " + p.describe()
}

// pairedInterval is the ratio (or difference) of two measurements taken
// repetition by repetition: its median and its spread (min-max) over the
// repetitions, and the 95% confidence interval of its mean, which judges.
type pairedInterval struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
	// Lo and Hi bound the 95% confidence interval of the mean: of the
	// logarithms of the ratios (a geometric mean) for a ratio, of the
	// differences for a difference; Student's t with N-1 degrees of
	// freedom. Unlike min-max, it narrows as repetitions are added: it
	// is what a run can resolve. With one repetition both are its value.
	Lo float64 `json:"ci95Lo"`
	Hi float64 `json:"ci95Hi"`
	// Ratio says whether this is a ratio (else a difference).
	Ratio bool `json:"-"`
}

// paired is num/den repetition by repetition, over the repetitions both
// have a value for; ok is false when there is none, or either side is
// unreliable.
func paired(num, den *measurement) (pairedInterval, bool) {
	return pairedBy(num, den, true, func(n, d float64) (float64, bool) { return n / d, d > 0 && n > 0 })
}

// pairedDiff is num-den repetition by repetition, as paired.
func pairedDiff(num, den *measurement) (pairedInterval, bool) {
	return pairedBy(num, den, false, func(n, d float64) (float64, bool) { return n - d, true })
}

// pairedBy combines num's and den's values of each repetition both have.
func pairedBy(num, den *measurement, ratio bool, combine func(n, d float64) (float64, bool)) (pairedInterval, bool) {
	if num == nil || den == nil || num.unreliable() || den.unreliable() {
		return pairedInterval{}, false
	}
	na, da := num.attempts(), den.attempts()
	var vs []float64
	for _, a := range slices.Sorted(maps.Keys(na)) {
		if d, ok := da[a]; ok {
			if v, ok := combine(na[a], d); ok {
				vs = append(vs, v)
			}
		}
	}
	if len(vs) == 0 {
		return pairedInterval{}, false
	}
	lo, med, hi := minMedMax(vs)
	p := pairedInterval{Median: med, Min: lo, Max: hi, N: len(vs), Ratio: ratio}
	p.Lo, p.Hi = confidence95(vs, ratio)
	return p, true
}

// confidence95 is the 95% confidence interval of the mean of vs (of their
// logarithms, given back as ratios, when log is set), by Student's t.
func confidence95(vs []float64, log bool) (lo, hi float64) {
	xs := slices.Clone(vs)
	if log {
		for i, v := range xs {
			xs[i] = math.Log(v)
		}
	}
	n := float64(len(xs))
	var mean float64
	for _, x := range xs {
		mean += x / n
	}
	half := 0.0
	if len(xs) > 1 {
		var ss float64
		for _, x := range xs {
			ss += (x - mean) * (x - mean)
		}
		half = studentT95(len(xs)-1) * math.Sqrt(ss/(n-1)/n)
	}
	lo, hi = mean-half, mean+half
	if log {
		lo, hi = math.Exp(lo), math.Exp(hi)
	}
	return lo, hi
}

// studentT95 is the two-sided 95% quantile of Student's t distribution
// with df degrees of freedom.
func studentT95(df int) float64 {
	t := []float64{12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
		2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
		2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042}
	if df <= len(t) {
		return t[max(df, 1)-1]
	}
	return 1.960 + 2.4/float64(df) // within 0.002 beyond 30
}

// resolves is the smallest difference the run resolves here: half the
// confidence interval's width, relative for a ratio (0.05: 5%), in the
// measurement's unit for a difference. A true difference smaller than
// this can go unseen.
func (p pairedInterval) resolves() float64 {
	if p.Ratio {
		return math.Sqrt(p.Hi/p.Lo) - 1
	}
	return (p.Hi - p.Lo) / 2
}

// describe is the interval for a reader: median, range, confidence
// interval and resolution.
func (p pairedInterval) describe() string {
	if !p.Ratio {
		return fmt.Sprintf("median %.1f, range %.1f-%.1f, 95%% CI of the mean %.1f-%.1f over %d (resolves ±%.1f)",
			p.Median, p.Min, p.Max, p.Lo, p.Hi, p.N, p.resolves())
	}
	return fmt.Sprintf("median %.3fx, range %.3fx-%.3fx, 95%% CI of the mean %.3fx-%.3fx over %d (resolves ±%.1f%%)",
		p.Median, p.Min, p.Max, p.Lo, p.Hi, p.N, 100*p.resolves())
}

// pairedDetail is a target's detail for the interval of num against den.
func pairedDetail(p pairedInterval, num, den *measurement) string {
	return fmt.Sprintf("per repetition: %s (%s); medians %s vs %s %s",
		p.describe(), p.verdict(num.Better), formatValue(num.Median), formatValue(den.Median), num.Unit)
}

// cell is the interval in a table: median (95% CI).
func (p pairedInterval) cell() string {
	return fmt.Sprintf("%.2fx (%.2f-%.2f)", p.Median, p.Lo, p.Hi)
}

// verdict says what a paired interval shows: a confidence interval that
// holds 1.0 is no measurable difference.
func (p pairedInterval) verdict(better string) string {
	switch {
	case p.Lo <= 1 && p.Hi >= 1:
		return "no measurable difference"
	case (p.Lo > 1) == (better == higher):
		return "better"
	default:
		return "worse"
	}
}

func servicesLabel(n int) string {
	if n == 1 {
		return "1 service"
	}
	return fmt.Sprintf("%d services", n)
}

// snatTargets: podpath's masquerade carries at least iptables' throughput
// and sets up more connections per second.
func snatTargets(r *results) {
	r.compareTarget("snat: TCP throughput to outside vs iptables MASQUERADE", ">= 1.00x",
		r.find(famSNAT, "throughput", cPodpath), r.find(famSNAT, "throughput", cIptables), cPodpath, cIptables,
		func(x float64) bool { return x >= 1 })
	r.compareTarget("snat: TCP_CRR rate to outside vs iptables MASQUERADE", "> 1.00x",
		r.find(famSNAT, "crr_rate", cPodpath), r.find(famSNAT, "crr_rate", cIptables), cPodpath, cIptables,
		func(x float64) bool { return x > 1 })
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
