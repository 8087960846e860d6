package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
)

// The README's benchmark table is written by the bench, from the latest
// full run's results, between these markers; nothing between them is
// edited by hand (TestReadmeTableIsTheLatestRun holds the two together).
const (
	readmeBegin = "<!-- bench table: written by `go run ./bench` from bench/results/latest.json; do not edit -->"
	readmeEnd   = "<!-- end of bench table -->"
)

// headline is one row of the README's table: podpath's figure against a
// peer's in the same run. metric may hold %d: the largest service count
// at which both were measured. denMetric, when set, is the peer's metric
// (podpath against itself in another setting).
type headline struct {
	label          string
	family, metric string
	num, den       string
	denMetric      string
}

var headlines = []headline{
	{"pod-to-pod TCP throughput vs a bare veth pair", famStream, "throughput", cPodpath, cLimit, ""},
	{"pod-to-pod TCP throughput vs Docker's bridge", famStream, "throughput", cPodpath, cDocker, ""},
	{"pod-to-pod 1-byte request/response vs bridge", famRR, "rate", cPodpath, cDocker, ""},
	{"pod-to-pod new connections vs bridge", famCRR, "rate", cPodpath, cDocker, ""},
	{"ClusterIP request/response, %d services vs 1 (podpath, the measured one last)", famServices, "rr_rate@%d", cPodpath, cPodpath, "rr_rate@1"},
	{"ClusterIP new connections, %d services vs 1 (podpath, the measured one last)", famServices, "crr_rate@%d", cPodpath, cPodpath, "crr_rate@1"},
	{"ClusterIP request/response, %d services, the measured one last, vs kube-proxy iptables", famServices, "rr_rate@%d", cPodpath, cIptables, ""},
	{"ClusterIP request/response, %d services, the measured one in the middle, vs kube-proxy iptables", famServices, "rr_rate_mid@%d", cPodpath, cIptables, ""},
	{"ClusterIP request/response, %d services, vs kube-proxy nftables", famServices, "rr_rate@%d", cPodpath, cNftables, ""},
	{"ClusterIP new connections, %d services, the measured one last, vs kube-proxy iptables", famServices, "crr_rate@%d", cPodpath, cIptables, ""},
	{"ClusterIP new connections, %d services, the measured one in the middle, vs kube-proxy iptables", famServices, "crr_rate_mid@%d", cPodpath, cIptables, ""},
	{"ClusterIP new connections, %d services, vs kube-proxy nftables", famServices, "crr_rate@%d", cPodpath, cNftables, ""},
	{"programming 10,000 services into an empty node vs iptables-restore", famServices, "program@10000", cPodpath, cIptables, ""},
	{"programming 10,000 services into an empty node vs nft", famServices, "program@10000", cPodpath, cNftables, ""},
	{"pod to outside, masqueraded: throughput vs MASQUERADE", famSNAT, "throughput", cPodpath, cIptables, ""},
	{"pod to outside, masqueraded: new connections vs MASQUERADE", famSNAT, "crr_rate", cPodpath, cIptables, ""},
	{"across nodes, direct routing vs the bare underlay: TCP throughput", famCrossNode, "throughput", cPodpathDirect, cLimit, ""},
	{"across nodes, direct routing vs the bare underlay: request/response", famCrossNode, "rr_rate", cPodpathDirect, cLimit, ""},
	{"across nodes, direct routing vs the bare underlay: new connections", famCrossNode, "crr_rate", cPodpathDirect, cLimit, ""},
	{"across nodes, VXLAN vs Flannel's VXLAN: request/response", famCrossNode, "rr_rate", cPodpathVXLAN, cFlannelVXLAN, ""},
	{"across nodes, VXLAN vs Flannel's VXLAN: new connections", famCrossNode, "crr_rate", cPodpathVXLAN, cFlannelVXLAN, ""},
	{"CNI ADD p50, one pod at a time, vs bridge + host-local", famCNI, "add_seq_p50", cniPodpath, cniBridge, ""},
	{"CNI ADD p99, one pod at a time, vs bridge + host-local", famCNI, "add_seq_p99", cniPodpath, cniBridge, ""},
	{"CNI ADD p50, 8 at a time, vs bridge + host-local", famCNI, "add_par_p50", cniPodpath, cniBridge, ""},
	{"CNI ADD p99, 8 at a time, vs bridge + host-local", famCNI, "add_par_p99", cniPodpath, cniBridge, ""},
}

// denOr is the peer's metric: denMetric, else metric.
func (h headline) denOr(metric string) string {
	if h.denMetric != "" {
		return h.denMetric
	}
	return metric
}

// readmeTable is the README's section between the markers for r.
func readmeTable(r *results) string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "The latest full run (%s; %s, %d cores, kernel %s; load average %s before, %s after; %.0f minutes). "+
		"Ratios are podpath's, taken repetition by repetition (each pair measured in the same round of the interleaving): "+
		"median (95%% confidence interval of the mean ratio, Student's t on the logarithms); an interval that holds 1.0 is no measurable difference, "+
		"and the last column is the smallest difference the run resolves (half the interval). Every figure, with each ratio's min-max, is in `bench/results/latest.md`.\n\n",
		m.Timestamp, m.CPUModel, m.Cores, m.Kernel, m.LoadBefore, m.LoadAfter, r.DurationS/60)
	b.WriteString("| measurement | podpath | peer | ratio | | resolves |\n|---|---|---|---|---|---|\n")
	counts := serviceCounts(r)
	for _, h := range headlines {
		// A row with a service count takes the largest count both
		// contenders were measured at.
		var num, den *measurement
		label := h.label
		for i := len(counts) - 1; i >= 0 && strings.Contains(h.metric, "%d"); i-- {
			metric := fmt.Sprintf(h.metric, counts[i])
			if num, den = r.find(h.family, metric, h.num), r.find(h.family, h.denOr(metric), h.den); num != nil && den != nil {
				label = fmt.Sprintf(h.label, counts[i])
				break
			}
		}
		if !strings.Contains(h.metric, "%d") {
			num, den = r.find(h.family, h.metric, h.num), r.find(h.family, h.denOr(h.metric), h.den)
		}
		if num == nil || den == nil || !num.trusted() || !den.trusted() {
			continue
		}
		ratio, verdict, resolves := "-", "", "-"
		if p, ok := paired(num, den); ok {
			ratio, verdict = p.cell(), p.verdict(num.Better)
			if p.N > 1 {
				resolves = fmt.Sprintf("±%.1f%%", 100*p.resolves())
			}
		}
		fmt.Fprintf(&b, "| %s | %s %s | %s %s | %s | %s | %s |\n", label,
			formatValue(num.Median), num.Unit, formatValue(den.Median), den.Unit, ratio, verdict, resolves)
	}
	if cp := controlPlaneSummary(r); cp != "" {
		b.WriteString("\nThe control plane, from a real kube-apiserver to the datapath: " + cp)
	}
	return b.String()
}

// updateReadme rewrites the table between the markers of the README at
// path; a README without both markers is an error.
func updateReadme(path string, r *results) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := withReadmeTable(b, readmeTable(r))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, out, 0o644)
}

// withReadmeTable is readme with table between the markers.
func withReadmeTable(readme []byte, table string) ([]byte, error) {
	i := bytes.Index(readme, []byte(readmeBegin))
	j := bytes.Index(readme, []byte(readmeEnd))
	if i < 0 || j < i {
		return nil, errors.New("no bench table markers")
	}
	var out bytes.Buffer
	out.Write(readme[:i+len(readmeBegin)])
	out.WriteString("\n" + table)
	out.Write(readme[j:])
	return out.Bytes(), nil
}
