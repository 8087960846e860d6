package main

import (
	"fmt"
	"math"
	"strings"
)

// familyTitles name the families in the summary and on the charts.
var familyTitles = map[string]string{
	famStream:       "TCP single-stream throughput, pod to pod (iperf3)",
	famRR:           "TCP_RR: 1-byte request/response on one connection",
	famCRR:          "TCP_CRR: one connection per 1-byte request/response",
	famProgRun:      "BPF_PROG_RUN: per-packet cost of each program path",
	famCNI:          "CNI ADD/DEL latency",
	famMemory:       "Kernel memory of podpath's maps and programs",
	famServices:     "Services: a pod to a ClusterIP (backend on the same node), N services programmed",
	famSNAT:         "SNAT: a pod to a host outside the node, masqueraded",
	famControlPlane: "Control plane: Services and EndpointSlices from a real kube-apiserver to the datapath",
	famSoak:         "Soak: new masqueraded connections to a host outside the node, as fast as they come, for minutes",
	famCrossNode:    "Cross-node: a pod to a pod on another node, over a shared underlay",
	famPolicy:       "NetworkPolicy: two pods of one node, no policy vs allowed among 1,000 policies; programming time",
}

// references are what each family's ratios are taken against.
func references(fam string) []string {
	switch fam {
	case famStream, famRR, famCRR:
		return []string{cDocker, cLimit}
	case famCNI:
		return []string{cniBridge}
	case famSNAT:
		return []string{cIptables}
	}
	return nil
}

// summary is the run as Markdown: machine, targets, then one table per
// family with ratios against the references.
func summary(r *results) string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "# podpath benchmark (%s run)\n\n", r.Config.Mode)
	fmt.Fprintf(&b, "%s, %d cores, kernel %s, %s, %s. Load average before %s, after %s. Took %.0f s; %d repetitions per measurement (CNI: %d rounds of %d pods), contenders interleaved.\n\n",
		m.CPUModel, m.Cores, m.Kernel, m.GoVersion, m.Timestamp, m.LoadBefore, m.LoadAfter, r.DurationS, r.Config.Reps, r.Config.CNIReps, r.Config.CNIPods)
	if len(r.FamilyS) > 0 {
		var parts []string
		for _, f := range r.FamilyS {
			parts = append(parts, fmt.Sprintf("%s %.0f s", f.Family, f.Seconds))
		}
		fmt.Fprintf(&b, "Time per family: %s.\n\n", strings.Join(parts, ", "))
	}
	if m.Loaded {
		fmt.Fprintf(&b, "**Started on a loaded machine**: load average %s on %d cores; expect wider spreads.\n\n", m.LoadBefore, m.Cores)
	}
	fmt.Fprintf(&b, "CPU frequency governor: %s. Veths have no interrupts: what one receives is processed in the softirq of the CPU that sent it (RPS default mask %s), so with client and server pinned each direction's softirq runs on its sender's CPU.\n\n", m.Governor, m.RPSDefaultMask)
	fmt.Fprintf(&b, "Tables show the median over repetitions and the min-max range. A ratio of two contenders is taken repetition by repetition "+
		"(each pair measured in the same round of the interleaving); its 95%% confidence interval is that of the mean ratio (Student's t on the logarithms of the "+
		"ratios), a target passes only when that whole interval clears it, an interval holding 1.0 is no measurable difference, and half its width is the "+
		"smallest difference the run resolves there (\"resolves\").\n\n")

	if len(r.Targets) > 0 {
		b.WriteString("## Targets\n\n| target | ratio | want | result | medians |\n|---|---|---|---|---|\n")
		for _, t := range r.Targets {
			res := "MISS"
			if t.Pass {
				res = "PASS"
			}
			fmt.Fprintf(&b, "| %s | %.3fx | %s | **%s** | %s |\n", t.Name, t.Ratio, t.Want, res, t.Detail)
		}
		b.WriteString("\n")
	}

	for _, fam := range allFamilies() {
		ms := r.family(fam)
		if len(ms) == 0 {
			continue
		}
		fmt.Fprintf(&b, "## %s\n\n", familyTitles[fam])
		if fam == famServices {
			b.WriteString(servicesSummary(r))
			continue
		}
		if fam == famControlPlane {
			b.WriteString(controlPlaneSummary(r))
			continue
		}
		if fam == famSoak {
			b.WriteString(soakSummary(r))
			continue
		}
		if fam == famCrossNode {
			b.WriteString(crossNodeSummary(r))
			continue
		}
		refs := references(fam)
		header := "| metric | contender | median | min | max | unit |"
		sep := "|---|---|---|---|---|---|"
		for _, ref := range refs {
			header += " vs " + ref + " |"
			sep += "---|"
		}
		if fam == famProgRun {
			header += " vs no-op | minus no-op (ns) |"
			sep += "---|---|"
		}
		b.WriteString(header + "\n" + sep + "\n")
		for _, x := range ms {
			if !x.trusted() {
				fmt.Fprintf(&b, "| %s | %s | %s | - | - | %s |", x.Metric, x.Contender, x.failedCell(), x.Unit)
				for range refs {
					b.WriteString(" - |")
				}
				if fam == famProgRun {
					b.WriteString(" - | - |")
				}
				b.WriteString("\n")
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |", x.Metric, x.Contender,
				formatValue(x.Median), formatValue(x.Min), formatValue(x.Max), x.Unit)
			for _, ref := range refs {
				fmt.Fprintf(&b, " %s |", ratioCell(x, r.find(fam, x.Metric, ref)))
			}
			if fam == famProgRun {
				if base := baseline(r, x); base != nil {
					fmt.Fprintf(&b, " %s | %s |", ratioCell(x, base), formatValue(x.Median-base.Median))
				} else {
					b.WriteString(" - | - |")
				}
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
		if fam == famPolicy {
			for _, metric := range []string{"rr_rate", "crr_rate"} {
				if s := pairedRatios(r.find(fam, metric, cPodpathPolicy), r.find(fam, metric, cPodpath)); s != "" {
					fmt.Fprintf(&b, "%s %s against podpath with no policy (the same node, paired by repetition): %s.\n\n", cPodpathPolicy, metric, s)
				}
			}
		}
		if fam == famRR || fam == famCRR {
			if s := pairedRatios(r.find(fam, "rate", cPodpathTraced), r.find(fam, "rate", cPodpath)); s != "" {
				fmt.Fprintf(&b, "%s: podpath measured again right after itself in each repetition while `podpath monitor --trace` follows the client pod (each of its packets raises a trace event at each hook, printed as JSON); its rate against podpath's, %s.\n\n", cPodpathTraced, s)
			}
		}
	}
	b.WriteString(failuresSection(r))
	if len(r.Notes) > 0 {
		b.WriteString("## Notes\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

// family returns a family's measurements grouped by metric, in recording
// order.
func (r *results) family(fam string) []*measurement {
	var metrics []string
	byMetric := map[string][]*measurement{}
	for _, m := range r.Measurements {
		if m.Family != fam {
			continue
		}
		if _, ok := byMetric[m.Metric]; !ok {
			metrics = append(metrics, m.Metric)
		}
		byMetric[m.Metric] = append(byMetric[m.Metric], m)
	}
	var out []*measurement
	for _, k := range metrics {
		out = append(out, byMetric[k]...)
	}
	return out
}

// baseline is the no-op program a BPF_PROG_RUN path is compared with.
func baseline(r *results, m *measurement) *measurement {
	if b, ok := m.Extra["baseline"]; ok && len(b) > 0 {
		if name, ok := b[0].(string); ok {
			return r.find(m.Family, m.Metric, name)
		}
	}
	return nil
}

// trusted: the measurement has values and few enough failed repetitions.
func (m *measurement) trusted() bool { return len(m.Reps) > 0 && !m.unreliable() }

// failedCell says how many repetitions failed, in place of a median.
func (m *measurement) failedCell() string {
	return fmt.Sprintf("unreliable: %d of %d repetitions failed", len(m.Failed), len(m.Failed)+len(m.Reps))
}

// failuresSection lists every failed repetition with its error.
func failuresSection(r *results) string {
	var b strings.Builder
	for _, m := range r.Measurements {
		for _, f := range m.Failed {
			if b.Len() == 0 {
				b.WriteString("## Failed repetitions\n\nEach gave no value; the run went on without it. A measurement with more than a third of its repetitions failed is unreliable: shown as such, not compared.\n\n")
			}
			fmt.Fprintf(&b, "- %s %s %s, repetition %d: %s\n", m.Family, m.Metric, m.Contender, f.Attempt+1, f.Error)
		}
	}
	if b.Len() > 0 {
		b.WriteString("\n")
	}
	return b.String()
}

func ratioCell(m, ref *measurement) string {
	if m == nil || ref == nil || ref == m || !ref.trusted() || !m.trusted() || ref.Median == 0 || math.IsNaN(ref.Median) {
		return "-"
	}
	return fmt.Sprintf("%.2fx", m.Median/ref.Median)
}

// formatValue prints 3-4 significant digits.
func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "-"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 10:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// pairedCell is num's ratio to den taken repetition by repetition:
// median (95% confidence interval of the mean), or "-".
func pairedCell(num, den *measurement) string {
	p, ok := paired(num, den)
	if !ok {
		return "-"
	}
	return p.cell()
}

// servicesSummary pivots the services family: per kind (TCP_RR, TCP_CRR)
// one row per service count and measured position, the contenders side by
// side with podpath's paired ratios to each; then the programming times.
func servicesSummary(r *results) string {
	var b strings.Builder
	get := func(metric string, n int, c string) *measurement {
		return r.find(famServices, fmt.Sprintf("%s@%d", metric, n), c)
	}
	med := func(m *measurement) string {
		if m == nil {
			return "not measured"
		}
		if !m.trusted() {
			return m.failedCell()
		}
		return fmt.Sprintf("%s (%s-%s)", formatValue(m.Median), formatValue(m.Min), formatValue(m.Max))
	}
	counts := serviceCounts(r)
	b.WriteString("Median (min-max) over repetitions; every (contender, N) is its own topology, all measured interleaved, client and server pinned to a CPU each. " +
		"Two services are measured in each: the one programmed last (for iptables the last rule of KUBE-SERVICES) and, with three or more, the one in the middle. " +
		"Ratios are podpath's, taken repetition by repetition: median (95% confidence interval of the mean); an interval that holds 1.0 is no measurable difference.\n\n")
	for _, kind := range []struct{ metric, label, unit string }{{"rr_rate", "TCP_RR", "transactions/s"}, {"crr_rate", "TCP_CRR", "connections/s"}} {
		fmt.Fprintf(&b, "%s (%s):\n\n", kind.label, kind.unit)
		b.WriteString("| services | measured one | podpath | iptables | nftables | podpath vs iptables | podpath vs nftables | podpath vs podpath at 1 |\n")
		b.WriteString("|---|---|---|---|---|---|---|---|\n")
		one := get(kind.metric, 1, cPodpath)
		for _, n := range counts {
			for _, pos := range svcPositions(n) {
				metric := kind.metric + pos.suffix
				pp, ipt, nft := get(metric, n, cPodpath), get(metric, n, cIptables), get(metric, n, cNftables)
				vsOne := "-"
				if n != 1 {
					vsOne = pairedCell(pp, one)
				}
				fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s |\n", n, pos.label, med(pp), med(ipt), med(nft),
					pairedCell(pp, ipt), pairedCell(pp, nft), vsOne)
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("Time to program the services (one run each, as the topologies were built; podpath: services.Manager.Apply; iptables: one " +
		kpRestore + " --noflush --counters; nftables: one nft -f of kube-proxy's first sync):\n\n" +
		"| services | podpath | iptables | nftables | iptables vs podpath | nftables vs podpath |\n|---|---|---|---|---|---|\n")
	for _, n := range counts {
		pp, ipt, nft := get("program_all", n, cPodpath), get("program_all", n, cIptables), get("program_all", n, cNftables)
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s |\n", n, secs(pp), secs(ipt), secs(nft), ratioCell(ipt, pp), ratioCell(nft, pp))
	}
	var prog []*measurement
	for _, m := range r.family(famServices) {
		if strings.HasPrefix(m.Metric, "program@") {
			prog = append(prog, m)
		}
	}
	if len(prog) > 0 {
		fmt.Fprintf(&b, "\nTime to program %s services into a node that has none (median over repetitions):\n\n| contender | median | min | max | vs podpath |\n|---|---|---|---|---|\n",
			strings.TrimPrefix(prog[0].Metric, "program@"))
		for _, m := range prog {
			fmt.Fprintf(&b, "| %s | %s s | %s s | %s s | %s |\n", m.Contender, formatValue(m.Median), formatValue(m.Min), formatValue(m.Max),
				ratioCell(m, r.find(famServices, m.Metric, cPodpath)))
		}
	}
	b.WriteString("\n")
	return b.String()
}

func secs(m *measurement) string {
	if m == nil {
		return "-"
	}
	return formatValue(m.Median) + " s"
}
