// Command bench measures podpath's same-node pod-to-pod datapath against its
// peers: two namespaces joined by a bare veth pair (the limit), Docker's
// default bridge with br_netfilter and Docker's iptables rules, and podpath
// through its real CNI plugin. It also times the BPF programs with
// BPF_PROG_RUN, CNI ADD/DEL against the reference bridge + host-local
// plugins, and reads the kernel memory of podpath's maps. Two families
// compare podpath with iptables beyond pod to pod: a pod reaching a
// ClusterIP with up to 100,000 services programmed (against kube-proxy's
// iptables rules), and a pod reaching a host outside, masqueraded (against
// Docker's MASQUERADE). One takes pods across nodes: podpath's direct
// routing and VXLAN overlay against Flannel's VXLAN and host-gw data paths
// built with the kernel, and the two nodes talking without pods.
//
// Every topology is built here, in network namespaces, and removed again,
// also on failure or Ctrl-C. Run as root from the repository root:
//
//	go run ./bench -quick   # smoke run, under 3 minutes
//	go run ./bench          # full run, under 25 minutes
//
// Results go to bench/results: latest.json, latest.md and one PNG chart per
// measurement family.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/podpath/podpath/maps"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// config is what one run measures and for how long.
type config struct {
	Mode        string        `json:"mode"`
	Reps        int           `json:"repetitions"`
	CNIReps     int           `json:"cniRepetitions"`
	StreamTime  time.Duration `json:"-"`
	StreamOmit  time.Duration `json:"-"`
	RRTime      time.Duration `json:"-"`
	RRWarmup    time.Duration `json:"-"`
	CNIPods     int           `json:"cniPods"`
	CNIParallel int           `json:"cniParallel"`
	ProgCalls   int           `json:"progRunCalls"`
	ProgRepeat  int           `json:"progRunRepeat"`
	LargeEps    uint32        `json:"memoryLargeMaxEndpoints"`
	VethGRO     bool          `json:"vethGRO"`

	// services: the service counts measured, repetitions, the RR/CRR
	// durations there, how many services the programming time is taken
	// for and how often, how long one iptables-restore may take, and
	// whether the nf_tables backend's restore is timed too (-iptables-nft:
	// 85 s at 10,000 services).
	SvcCounts    []int         `json:"serviceCounts"`
	SvcReps      int           `json:"serviceRepetitions"`
	SvcTime      time.Duration `json:"-"`
	SvcWarmup    time.Duration `json:"-"`
	SvcProgramN  int           `json:"serviceProgramCount"`
	SvcProgReps  int           `json:"serviceProgramRepetitions"`
	RestoreLimit time.Duration `json:"-"`
	NftProgram   bool          `json:"serviceProgramNft"`
	// snat: repetitions (durations as tcp_stream and tcp_rr).
	SNATReps int `json:"snatRepetitions"`
	// cross_node: repetitions (durations as tcp_stream and tcp_rr), each
	// measured in this many alternating turns per contender for TCP_RR and
	// TCP_CRR, and for throughput.
	CrossNodeReps        int `json:"crossNodeRepetitions"`
	CrossNodeTurns       int `json:"crossNodeTurns"`
	CrossNodeStreamTurns int `json:"crossNodeStreamTurns"`
	// control_plane: Services created (1 to 10 endpoints each), rounds
	// (each contender once per round), EndpointSlice changes in all,
	// goroutines and client QPS creating the objects, the contenders'
	// minimum sync period, the pause between changes, and how long
	// programming everything may take.
	CPServices    int           `json:"controlPlaneServices"`
	CPRounds      int           `json:"controlPlaneRounds"`
	CPChanges     int           `json:"controlPlaneChanges"`
	CPWorkers     int           `json:"controlPlaneCreateWorkers"`
	CPQPS         float32       `json:"controlPlaneClientQPS"`
	CPMinSync     time.Duration `json:"-"`
	CPSpacing     time.Duration `json:"-"`
	CPSettleLimit time.Duration `json:"-"`
	// soak: how long, how many CRR clients, how often it samples, and
	// from when on it is judged (see steadyAfter).
	SoakTime     time.Duration `json:"-"`
	SoakClients  int           `json:"soakClients"`
	SoakInterval time.Duration `json:"-"`
	SoakSteady   time.Duration `json:"-"`

	// Human-readable copies of the durations for the JSON.
	StreamTimeS float64 `json:"streamSeconds"`
	StreamOmitS float64 `json:"streamOmitSeconds"`
	RRTimeS     float64 `json:"rrSeconds"`
	RRWarmupS   float64 `json:"rrWarmupSeconds"`
	SvcTimeS    float64 `json:"serviceRRSeconds"`
	SvcWarmupS  float64 `json:"serviceRRWarmupSeconds"`
	RestoreS    float64 `json:"restoreLimitSeconds"`
	CPMinSyncS  float64 `json:"controlPlaneMinSyncSeconds"`
	CPSpacingS  float64 `json:"controlPlaneChangeSpacingSeconds"`
	CPSettleS   float64 `json:"controlPlaneSettleLimitSeconds"`
	SoakTimeS   float64 `json:"soakSeconds"`
	SoakIntS    float64 `json:"soakIntervalSeconds"`
	SoakSteadyS float64 `json:"soakSteadyAfterSeconds"`
}

func newConfig(quick bool) config {
	c := config{
		Mode: "full", Reps: 7, CNIReps: 4,
		StreamTime: 3 * time.Second, StreamOmit: time.Second,
		RRTime: 2 * time.Second, RRWarmup: 300 * time.Millisecond,
		CNIPods: 100, CNIParallel: 8,
		ProgCalls: 5000, ProgRepeat: 200,
		LargeEps:  1 << 20,
		SvcCounts: []int{1, 1000, 10000, 100000}, SvcReps: 5,
		SvcTime: time.Second, SvcWarmup: 200 * time.Millisecond,
		SvcProgramN: 10000, SvcProgReps: 3, RestoreLimit: 5 * time.Minute,
		SNATReps: 5, CrossNodeReps: 5, CrossNodeTurns: 4, CrossNodeStreamTurns: 1,
		CPServices: 10000, CPRounds: 3, CPChanges: 100, CPWorkers: 32, CPQPS: 5000,
		CPMinSync: time.Millisecond, CPSpacing: 20 * time.Millisecond, CPSettleLimit: 10 * time.Minute,
		SoakTime: 10 * time.Minute, SoakInterval: 10 * time.Second,
	}
	if quick {
		c.Mode, c.Reps, c.CNIReps = "quick", 2, 2
		c.StreamTime, c.StreamOmit = time.Second, time.Second
		c.RRTime, c.RRWarmup = time.Second, 200*time.Millisecond
		c.CNIPods = 16
		c.ProgCalls = 1000
		c.SvcCounts, c.SvcReps, c.SvcProgReps, c.SvcProgramN = []int{1, 1000}, 2, 2, 1000
		c.SvcTime, c.SvcWarmup = 600*time.Millisecond, 200*time.Millisecond
		c.SNATReps, c.CrossNodeReps, c.CrossNodeTurns, c.CrossNodeStreamTurns = 2, 1, 1, 1
		c.CPServices, c.CPRounds, c.CPChanges = 1000, 1, 10
		c.SoakTime = time.Minute
	}
	c.setSoak(0, 0)
	c.StreamTimeS, c.StreamOmitS = c.StreamTime.Seconds(), c.StreamOmit.Seconds()
	c.RRTimeS, c.RRWarmupS = c.RRTime.Seconds(), c.RRWarmup.Seconds()
	c.SvcTimeS, c.SvcWarmupS, c.RestoreS = c.SvcTime.Seconds(), c.SvcWarmup.Seconds(), c.RestoreLimit.Seconds()
	c.CPMinSyncS, c.CPSpacingS, c.CPSettleS = c.CPMinSync.Seconds(), c.CPSpacing.Seconds(), c.CPSettleLimit.Seconds()
	return c
}

// setSoak sets the soak's duration and clients (0: keep the mode's
// duration, the default clients) and what follows from them.
func (c *config) setSoak(d time.Duration, clients int) {
	if d > 0 {
		c.SoakTime = d
	}
	c.SoakClients = clients
	if clients <= 0 {
		c.SoakClients = defaultSoakClients()
	}
	c.SoakSteady = steadyAfter(c.SoakTime)
	c.SoakTimeS, c.SoakIntS, c.SoakSteadyS = c.SoakTime.Seconds(), c.SoakInterval.Seconds(), c.SoakSteady.Seconds()
}

// families are the measurement families, in the order they run.
var families = []string{famStream, famRR, famCRR, famProgRun, famCNI, famMemory, famServices, famSNAT, famCrossNode, famControlPlane, famPolicy}

// onDemand families run only when -only names them: a soak takes ten
// minutes of the machine and is a check, not a comparison.
var onDemand = []string{famSoak}

// allFamilies are every family that can be run, in the order they run.
func allFamilies() []string { return slices.Concat(families, onDemand) }

func main() {
	quick := flag.Bool("quick", false, "smoke run: 2 repetitions (cross_node: 1), 1 s measurements, 16 pods, 1,000 services")
	out := flag.String("out", "", "results directory (default: bench/results in the source tree; bench/results/quick with -quick)")
	only := flag.String("only", "", "comma-separated families to run (default all but "+strings.Join(onDemand, ",")+"): "+strings.Join(allFamilies(), ","))
	soakTime := flag.Duration("soak-time", 0, "how long the soak sends connections (default 10m, 1m with -quick)")
	soakClients := flag.Int("soak-clients", 0, fmt.Sprintf("concurrent TCP_CRR clients of the soak (default %d)", defaultSoakClients()))
	verbose := flag.Bool("v", false, "log every step")
	vethGRO := flag.Bool("veth-gro", false, "turn GRO on for every veth of the pod-to-pod topologies (default: kernel defaults, GRO off)")
	iptNft := flag.Bool("iptables-nft", false, "services: also time iptables-nft-restore of the programmed services, once (85 s at 10,000)")
	xnReps := flag.Int("cross-node-reps", 0, "cross_node: repetitions (default 5, 1 with -quick); more narrow its ratios' intervals")
	render := flag.String("render", "", "measure nothing: re-evaluate the targets and rewrite latest.md and the charts from DIR/latest.json")
	flag.Parse()
	if *render != "" {
		if err := rerender(*render); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))

	cfg := newConfig(*quick)
	cfg.setSoak(*soakTime, *soakClients)
	cfg.NftProgram = *iptNft
	if *xnReps > 0 {
		cfg.CrossNodeReps = *xnReps
	}
	if err := run(cfg, *out, *only, *vethGRO); err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted; everything this run made has been removed")
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(cfg config, outDir, only string, vethGRO bool) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, BPF, iptables): run with sudo")
	}
	selected := families
	if only != "" {
		selected = nil
		for _, f := range strings.Split(only, ",") {
			if !slices.Contains(allFamilies(), f) {
				return fmt.Errorf("unknown family %q (have %s)", f, strings.Join(allFamilies(), ", "))
			}
			selected = append(selected, f)
		}
	}
	src, err := benchDir()
	if err != nil {
		return err
	}
	defaultOut := outDir == ""
	if outDir == "" {
		outDir = filepath.Join(src, "results")
		// A soak alone, and a quick run, keep their results apart, so
		// they never replace the full run's latest.json (the README's).
		switch {
		case only == famSoak:
			outDir = filepath.Join(outDir, famSoak)
		case cfg.Mode == "quick":
			outDir = filepath.Join(outDir, "quick")
		}
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go hardStopOnSecondSignal()
	defer cleanup.runAll()

	sweepStale()
	start := time.Now()
	res := &results{Config: cfg, Machine: readMachine()}
	slog.Info("bench", "mode", cfg.Mode, "families", strings.Join(selected, ","), "reps", cfg.Reps)

	res.Notes = methodNotes(cfg)
	env := &env{cfg: cfg, srcDir: src, res: res, vethGRO: vethGRO}
	cfg.VethGRO = vethGRO
	defer env.close()
	for _, fam := range selected {
		if err := ctx.Err(); err != nil {
			return err
		}
		t0 := time.Now()
		if err := env.runFamily(ctx, fam); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%s: %w", fam, err)
		}
		slog.Info("family done", "family", fam, "took", time.Since(t0).Round(time.Millisecond))
		res.FamilyS = append(res.FamilyS, familyTime{fam, round3(time.Since(t0).Seconds())})
	}
	if err := env.close(); err != nil {
		res.Notes = append(res.Notes, "cleanup: "+err.Error())
	}

	res.finish(start)
	evaluateTargets(res)
	if err := writeResults(res, outDir); err != nil {
		return err
	}
	if err := drawCharts(res, outDir); err != nil {
		return fmt.Errorf("charts: %w", err)
	}
	md := summary(res)
	if err := os.WriteFile(filepath.Join(outDir, "latest.md"), []byte(md), 0o644); err != nil {
		return err
	}
	// A full run into bench/results is the README's table.
	if defaultOut && only != famSoak && cfg.Mode == "full" {
		if err := updateReadme(filepath.Join(src, "..", "README.md"), res); err != nil {
			return err
		}
	}
	fmt.Print("\n" + md)
	fmt.Printf("\nresults in %s (took %s)\n", outDir, time.Since(start).Round(time.Second))
	return soakVerdict(res)
}

// rerender rewrites a results directory's summary and charts from its
// latest.json, with the targets evaluated again.
func rerender(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "latest.json"))
	if err != nil {
		return err
	}
	var res results
	if err := json.Unmarshal(b, &res); err != nil {
		return err
	}
	res.Targets = nil
	evaluateTargets(&res)
	if err := writeResults(&res, dir); err != nil {
		return err
	}
	if err := drawCharts(&res, dir); err != nil {
		return fmt.Errorf("charts: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "latest.md"), []byte(summary(&res)), 0o644); err != nil {
		return err
	}
	// bench/results itself: its run is the README's table.
	src, err := benchDir()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if abs == filepath.Join(src, "results") && res.Config.Mode == "full" {
		return updateReadme(filepath.Join(src, "..", "README.md"), &res)
	}
	return nil
}

// methodNotes say how each family measures, in the results themselves.
func methodNotes(c config) []string {
	return []string{
		fmt.Sprintf("tcp_stream: iperf3 single stream, %v measured after %v of warm-up (--omit), server and client each in its pod's netns; throughput is iperf3's receiver figure", c.StreamTime, c.StreamOmit),
		fmt.Sprintf("tcp_rr/tcp_crr: Go client and server on blocking sockets, TCP_NODELAY, threads inside the pods' netns; %v warm-up, %v measured; latency per transaction from the client", c.RRWarmup, c.RRTime),
		"tcp_crr: the client closes with SO_LINGER 0 (RST), so neither side keeps TIME_WAIT sockets and ports are reused at once; the ephemeral port range is left at the kernel default",
		"all topologies: MTU 1500 on every device, veths with kernel-default offloads (see topologies.*.devices); the podpath and bridge contenders also count packets on their own path (forward_local counter, conntrack ACCEPT rule) to prove the traffic took it",
		fmt.Sprintf("bpf_prog_run: kernel-timed BPF_PROG_RUN, %d calls x %d runs per repetition for tc (XDP: the same runs in %d calls); the kernel reports whole ns per run; every run's verdict and counter are checked", c.ProgCalls, c.ProgRepeat, xdpCalls),
		"bpf_prog_run local delivery: from_pod rewrites the frame it forwards and BPF_PROG_RUN reruns it on the rewritten frame, so the destination's gateway MAC is seeded equal to the source pod's MAC and TTL starts at 255: every run takes the forwarding path",
		fmt.Sprintf("bpf_prog_run drop events: off (rate 0) except on the paths that say \"drop events on\" (%d per second and CPU, bursts of %d, the node default); a flood of drops outruns the limit, so past the first burst each drop takes the token check and is held back", maps.DefaultDropEventRate, maps.DefaultDropEventBurst),
		"bpf_prog_run tracing: off (the programs as the loader builds them then, trace_capable 0: the verifier removes the hooks) except on the paths that say \"tracing\" (built with trace_capable 1, as while podpath monitor --trace runs): for another pod's address (each run checks the filter and is not selected) or for this pod's (each run raises a trace event); a reader empties the events ring buffer throughout, as podpath monitor would; \"built without tracing\" is from_pod compiled without the hooks (PODPATH_NO_TRACE), the reference of the tracing-off target",
		fmt.Sprintf("cni: each pod in a fresh netns (made and removed outside the timing), ADD/DEL through libcni in the node's netns, %d pods one at a time then %d at a time; reference: bridge (isGateway, ipMasq false, like podpath sets up no NAT) + host-local, containernetworking/plugins %s; "+
			"<verb>_<mode>_step_<step>: the median over a round's pods of each step podpath-cni times itself (PODPATH_CNI_TIMINGS), outside_plugin being a pod's latency less the plugin's own total (exec, the Go runtime's start, libcni); "+
			"podpath-cni runs with deferTCX, as the agent's conflist sets it, the agent's mover (cni.MoveToTCX, pods moved to tcx links once ADDs have been quiet for 1 s) beside it, and each round's DELs start once every pod is on tcx links; "+
			"tcx_attach and legacy_tc_attach: attaching a no-op tc program to a fresh veth in the node's netns, by a tcx link and by clsact + cls_bpf, median of %d per repetition", c.CNIPods, c.CNIParallel, cniPluginsVersion, attachSamples),
		"memory: read once (deterministic) from the kernel, fdinfo memlock via ebpf MapInfo/ProgramInfo, after loader.Init into a temporary pin root",
		fmt.Sprintf("services: a client pod reaches %s:%d (ClusterIP) whose one backend is a server pod on the same node (port %d), with %v services programmed, the measured one last and, with three or more, a second one (%s, metrics *_mid) at position N/2+1; the other services have %d backends each on other nodes (never reached). "+
			"TCP_RR and TCP_CRR as above, client and server pinned to a CPU each, %v warm-up, %v measured, %d repetitions; every (contender, N) is a topology of its own, all built first, then every (topology, measured service) measured interleaved (rotated order) so rates at different N are compared within the same minutes; ratios paired per repetition",
			measuredVIP, svcPort, svcTargetPort, c.SvcCounts, measuredMidVIP, fillerBackends, c.SvcWarmup, c.SvcTime, c.SvcReps),
		"services, iptables: Docker's bridge topology with kube-proxy's iptables-mode rules generated here in its proxier's format (KUBE-SERVICES from PREROUTING and OUTPUT, one rule per ClusterIP, KUBE-SVC chains with statistic rules to KUBE-SEP chains doing DNAT, KUBE-MARK-MASQ and KUBE-POSTROUTING, --cluster-cidr " + kpClusterCIDR + ", comments left off endpoint rules above 1000 endpoints as kube-proxy does) loaded with one " + kpRestore + " --noflush --counters; Docker's rules loaded with the same backend. The legacy backend is used because iptables-nft 1.8.9's --noflush restore grows with the square of the rules (see program@ iptables-nft)",
		"services, nftables: the same Docker's bridge topology with kube-proxy's nftables-mode table generated here as its proxier writes it (the transaction of a kube-proxy's first sync in knftables' command syntax: base chains, the services chain's verdict map keyed by address . protocol . port, one chain per service port that DNATs, numgen random over a map for several endpoints, cluster-ips and hairpin sets, masquerading by mark, --cluster-cidr " + kpClusterCIDR + ", service CIDR " + kpServiceCIDR.String() + ") loaded with one nft -f; TestKubeProxyRulesAsKubeProxyWrites checks both generators against the real kube-proxy's output for the same services",
		"services, podpath: from_pod's forward_local counter must rise and the measured service must have conntrack entries after every measurement; iptables: the packet counter of the measured service's DNAT rule must rise; nftables: connection tracking (cleared for the ClusterIP before each measurement) must hold connections to the ClusterIP translated to the server; all: the server must see the client pod's own address",
		fmt.Sprintf("services, programming time: podpath's services.Manager.Apply of %d services (state file included) into a node with none (after one empty Apply, since a fresh node's first one re-synchronises), then an Apply of nothing, untimed; iptables: one restore of the same services into a fresh namespace holding Docker's rules and kube-proxy's start-up chains; nftables: one nft -f of kube-proxy's first sync into a fresh namespace holding Docker's rules", c.SvcProgramN),
		fmt.Sprintf("snat: a client pod to a server in an outside host netns behind the node's uplink veth (same addresses for both contenders, no route back to the pods outside): iperf3 as tcp_stream, TCP_RR and TCP_CRR as tcp_rr/tcp_crr, %d repetitions; the server must see the node's uplink address; podpath's to_netdev SNAT counter or the MASQUERADE rule's counter must rise", c.SNATReps),
		crossNodeNote(c),
	}
}

// hardStopOnSecondSignal removes everything the run made and exits when a
// second Ctrl-C arrives while the first is still unwinding.
func hardStopOnSecondSignal() {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	<-sig
	fmt.Fprintln(os.Stderr, "bench: interrupted twice, cleaning up and exiting")
	cleanup.runAll()
	os.Exit(130)
}

// benchDir finds bench/ in the source tree: beside this file when run from
// it, else under the working directory.
func benchDir() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok {
		dir := filepath.Dir(file)
		if _, err := os.Stat(filepath.Join(dir, "main.go")); err == nil {
			return dir, nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(wd, "bench")
	if _, err := os.Stat(filepath.Join(dir, "main.go")); err != nil {
		return "", errors.New("run from the podpath repository root (bench/ not found)")
	}
	return dir, nil
}

// discard is where plugin logs go.
var discard io.Writer = io.Discard
