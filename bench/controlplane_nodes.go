package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
)

// Contenders of the control-plane family.
const (
	cpKPIptables = "kube-proxy iptables"
	cpKPNftables = "kube-proxy nftables"
)

// Where every contender serves its metrics and health, inside its own node
// namespace (kube-proxy's defaults; the agent is told the same).
const (
	cpMetricsURL = "http://127.0.0.1:10249/metrics"
	cpReadyURL   = "http://127.0.0.1:10256/readyz"
)

// cpSpec is one contender: how to start a fresh node running it.
type cpSpec struct {
	contender string
	node      string // its Node object
	port      string // its port on the control plane's bridge
	addr      netip.Prefix
	podCIDR   string
	start     func(ctx context.Context, e *env, c *cpCluster, s cpSpec) (*cpNode, error)
}

// cpNode is a running contender: a node namespace joined to the control
// plane, the process, and how to read it.
type cpNode struct {
	spec      cpSpec
	ns        ns.NetNS
	started   time.Time // when its process was started
	closeOnce sync.Once
	closeErr  error
	proc      *cpProc
	http      *http.Client
	closers   []func() error
	// labels of its histograms and gauges ("" or `{ip_family="IPv4"}`),
	// and the histograms' names.
	labels, progMetric, syncMetric string
	// podpath: the node's pins (the agent's maps).
	pinRoot string
	// base is what was programmed before the benchmark's objects existed.
	base cpCounts
	// settled says whether everything the benchmark created is programmed
	// and, if so, when the sync that completed it ended.
	settled func(m metricSet, want cpCounts) (time.Time, bool)
	// count reads what is programmed from the datapath itself (the rules*
	// fields).
	count func(ctx context.Context) (cpCounts, error)
	// seen, if set, says whether service vip has backend addr in the
	// datapath (podpath: a few map lookups, cheap enough to poll).
	seen func(vip, addr netip.Addr) (bool, error)
}

// cpCounts is what a contender has programmed: services and endpoints
// by its own gauges (podpath), changes received (kube-proxy's totals), and
// service frontends and endpoints counted in the datapath (podpath: map
// entries; kube-proxy: rules and chains).
type cpCounts struct {
	services, endpoints     int
	svcChanges, epChanges   float64
	rulesServices, rulesEps int
}

// close stops the process and removes the node, newest first.
func (n *cpNode) close() error {
	n.closeOnce.Do(func() { n.closeErr = closeAll(n.closers) })
	return n.closeErr
}

// run starts the contender's process in the node and has close stop it.
func (n *cpNode) run(logPath string, env []string, bin string, args ...string) error {
	n.started = time.Now()
	p, err := startProc(n.ns, logPath, env, bin, args...)
	if err != nil {
		return err
	}
	n.proc = p
	n.closers = append(n.closers, cleanup.add(n.spec.contender+" process", p.stop))
	return nil
}

// waitReady polls ready until it holds (a minute at most), failing early
// when the process exits.
func (n *cpNode) waitReady(ctx context.Context, ready func() (bool, string)) error {
	deadline := time.Now().Add(time.Minute)
	last := ""
	for time.Now().Before(deadline) {
		if n.proc.exited() {
			return fmt.Errorf("%s exited before it was ready:\n%s", n.spec.contender, n.proc.tail(3000))
		}
		ok, state := ready()
		if ok {
			return nil
		}
		last = state
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after a minute (%s):\n%s", n.spec.contender, last, n.proc.tail(3000))
}

// --- processes ---

// cpProc is a contender's process, started with nsenter in its node's
// namespace, its output in a file.
type cpProc struct {
	cmd  *exec.Cmd
	path string
	log  *os.File
	done chan struct{}
}

func startProc(n ns.NetNS, logPath string, env []string, bin string, args ...string) (*cpProc, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.Path(), "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	// No Pdeathsig: it fires when the forking thread exits, and Go ends
	// threads that a namespace switch left locked. The cleanup stack
	// stops it. A process group of its own holds it and what it runs
	// (iptables-restore, nft), for setNice.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", filepath.Base(bin), err)
	}
	p := &cpProc{cmd: cmd, path: logPath, log: log, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

// setNice sets the nice value of every thread of the contender and of the
// processes it started (its process group).
func (p *cpProc) setNice(nice int) error {
	if err := unix.Setpriority(unix.PRIO_PGRP, p.cmd.Process.Pid, nice); err != nil {
		return fmt.Errorf("nice %d for %s: %w", nice, filepath.Base(p.path), err)
	}
	return nil
}

func (p *cpProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after 10 s.
func (p *cpProc) stop() error {
	if !p.exited() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	return p.log.Close()
}

func (p *cpProc) tail(n int) string {
	b, err := os.ReadFile(p.path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// --- metrics ---

// metricSet is one scrape: "name{labels}" -> value.
type metricSet map[string]float64

// nsHTTPClient is a client whose connections are made inside n.
func nsHTTPClient(n ns.NetNS) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.Do(func(ns.NetNS) error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 2}}
}

func (n *cpNode) scrape(ctx context.Context) (metricSet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cpMetricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := n.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", cpMetricsURL, resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format (no timestamps).
func parseMetrics(r io.Reader) (metricSet, error) {
	m := metricSet{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// hist is a histogram's count and sum.
func (n *cpNode) hist(m metricSet, name string) (count, sum float64) {
	return m[name+"_count"+n.labels], m[name+"_sum"+n.labels]
}

// --- podpath ---

// startPodpathNode is a fresh sim node (datapath loaded, maps empty) with
// `podpath agent` running in it as a DaemonSet would, its uplink eth0 on
// the control plane's bridge.
func startPodpathNode(ctx context.Context, e *env, c *cpCluster, s cpSpec) (_ *cpNode, err error) {
	bin, err := sim.BuildPodpath(filepath.Join(e.srcDir, ".cache", "podpath-agent"))
	if err != nil {
		return nil, err
	}
	cni, err := e.podpathCNI()
	if err != nil {
		return nil, err
	}
	node, closeNode, err := newSimNode("cpnode", netip.MustParsePrefix(s.podCIDR), sim.WithCNIBin(cni), sim.WithMTU(mtu))
	if err != nil {
		return nil, err
	}
	n := &cpNode{spec: s, ns: node.NS, http: nsHTTPClient(node.NS), closers: []func() error{closeNode}, pinRoot: node.PinRoot,
		progMetric: "podpath_network_programming_duration_seconds", syncMetric: "podpath_sync_duration_seconds"}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	if err := c.attach(node.NS, s.port, s.addr); err != nil {
		return nil, err
	}
	logPath := filepath.Join(filepath.Dir(node.StateDir), "agent.log")
	err = n.run(logPath, nil, bin,
		"--pin-root", node.PinRoot, "--state-dir", node.StateDir, "agent",
		"--kubeconfig", c.kubeconfig,
		"--node-name", s.node,
		"--pod-cidr", s.podCIDR,
		"--uplink", "eth0",
		"--cni-bin-dir=",
		"--no-socket-lb",
		"--min-sync-period", e.cfg.CPMinSync.String(),
		// As kube-proxy's full resync: hourly (its FullSyncPeriod).
		"--sync-period", "1h",
		"--metrics-bind-address", "127.0.0.1:10249",
		"--healthz-bind-address", "127.0.0.1:10256",
		"-v")
	if err != nil {
		return nil, err
	}
	err = n.waitReady(ctx, func() (bool, string) {
		resp, err := n.http.Get(cpReadyURL)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	if err != nil {
		return nil, err
	}
	svcs, err := maps.OpenPinned(node.PinRoot, maps.MapServices)
	if err != nil {
		return nil, err
	}
	slots, err := maps.OpenPinned(node.PinRoot, maps.MapSvcSlots)
	if err != nil {
		svcs.Close()
		return nil, err
	}
	backends, err := maps.OpenPinned(node.PinRoot, maps.MapBackends)
	if err != nil {
		svcs.Close()
		slots.Close()
		return nil, err
	}
	// Before the process stops: closers run newest first.
	n.closers = append([]func() error{closeNode, func() error { return errors.Join(svcs.Close(), slots.Close(), backends.Close()) }}, n.closers[1:]...)
	n.settled = func(m metricSet, want cpCounts) (time.Time, bool) {
		if int(m["podpath_services_programmed"]) != want.services || int(m["podpath_endpoints_programmed"]) != want.endpoints {
			return time.Time{}, false
		}
		// The agent logs each sync that changed something at its end
		// (-v); the last one completed what the gauges show.
		t, err := lastLogTime(logPath, `msg="services synced"`)
		if err != nil {
			slog.Warn("control plane: podpath's last sync time from its log", "err", err)
			return time.Now(), true
		}
		return t, true
	}
	n.count = func(context.Context) (cpCounts, error) {
		return cpCounts{rulesServices: maps.CountEntries(svcs), rulesEps: maps.CountEntries(backends)}, nil
	}
	n.seen = func(vip, addr netip.Addr) (bool, error) { return podpathHasBackend(svcs, slots, backends, vip, addr) }
	m, err := n.scrape(ctx)
	if err != nil {
		return nil, err
	}
	if n.base, err = n.count(ctx); err != nil {
		return nil, err
	}
	n.base.services, n.base.endpoints = int(m["podpath_services_programmed"]), int(m["podpath_endpoints_programmed"])
	return n, nil
}

// podpathHasBackend says whether the ClusterIP frontend vip:cpPort/TCP has
// addr among its active backends.
func podpathHasBackend(svcs, slots, backends *ebpf.Map, vip, addr netip.Addr) (bool, error) {
	key := maps.SvcKey{Addr: maps.Addr16(vip), Port: maps.Port(cpPort), Proto: 6, Family: maps.FamilyIPv4, Scope: uint8(maps.ScopeInternal)}
	var info maps.SvcInfo
	if err := svcs.Lookup(&key, &info); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		return false, err
	}
	for s := uint32(1); s <= uint32(info.Backends); s++ {
		var id uint32
		if err := slots.Lookup(maps.SlotKey{SvcId: info.Id, Slot: s}, &id); err != nil {
			continue
		}
		var b maps.Backend
		if err := backends.Lookup(id, &b); err != nil {
			continue
		}
		if maps.AddrFrom16(b.Family, b.Addr) == addr {
			return true, nil
		}
	}
	return false, nil
}

// lastLogTime is the time= of the last line of a slog text log holding
// match.
func lastLogTime(path, match string) (time.Time, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !strings.Contains(l, match) || !strings.HasPrefix(l, "time=") {
			continue
		}
		v, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		return time.Parse(time.RFC3339Nano, v)
	}
	return time.Time{}, fmt.Errorf("no line with %s in %s", match, path)
}

// --- kube-proxy ---

// kube-proxy's configuration: its defaults but for where it listens, its
// node, the cluster CIDR, the mode, the minimum sync period (the same as
// podpath's), and conntrack settings left to the namespace (no writes to
// nf_conntrack_max, which is not per namespace).
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
hostnameOverride: %q
clusterCIDR: %q
mode: %q
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
iptables:
  minSyncPeriod: %s
nftables:
  minSyncPeriod: %s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`

// startKubeProxyNode is a fresh namespace joined to the control plane
// running the real kube-proxy of the same Kubernetes build, in iptables
// mode (the legacy backend, as the services family) or nftables mode.
func startKubeProxyNode(ctx context.Context, e *env, c *cpCluster, s cpSpec) (_ *cpNode, err error) {
	mode := "iptables"
	if s.contender == cpKPNftables {
		mode = "nftables"
	}
	nodeNS, rm, err := newNS("kp" + mode[:3])
	if err != nil {
		return nil, err
	}
	n := &cpNode{spec: s, ns: nodeNS, http: nsHTTPClient(nodeNS), closers: []func() error{rm}, labels: `{ip_family="IPv4"}`,
		progMetric: "kubeproxy_network_programming_duration_seconds", syncMetric: "kubeproxy_sync_proxy_rules_duration_seconds"}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	if err := c.attach(nodeNS, s.port, s.addr); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "podpath-bench-kube-proxy-")
	if err != nil {
		return nil, err
	}
	n.closers = append(n.closers, func() error { return os.RemoveAll(dir) })
	conf := filepath.Join(dir, "config.yaml")
	minSync := e.cfg.CPMinSync.String()
	if err := os.WriteFile(conf, fmt.Appendf(nil, kubeProxyConfig, c.kubeconfig, s.node, cpClusterCIDR, mode, minSync, minSync), 0o644); err != nil {
		return nil, err
	}
	var env []string
	if mode == "iptables" {
		// kube-proxy runs iptables, iptables-save and iptables-restore
		// from PATH: point them at the legacy backend.
		bin := filepath.Join(dir, "bin")
		if err := os.Mkdir(bin, 0o755); err != nil {
			return nil, err
		}
		for _, t := range []string{"iptables", "ip6tables"} {
			for _, suffix := range []string{"", "-save", "-restore"} {
				if err := os.Symlink("/usr/sbin/"+t+"-legacy"+suffix, filepath.Join(bin, t+suffix)); err != nil {
					return nil, err
				}
			}
		}
		env = []string{"PATH=" + bin + ":" + os.Getenv("PATH")}
	}
	if err := n.run(filepath.Join(dir, "kube-proxy.log"), env, filepath.Join(c.bins, "kube-proxy"), "--config="+conf, "--v=2"); err != nil {
		return nil, err
	}
	last := `kubeproxy_sync_proxy_rules_last_timestamp_seconds` + n.labels
	queued := `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds` + n.labels
	err = n.waitReady(ctx, func() (bool, string) {
		m, err := n.scrape(ctx)
		if err != nil {
			return false, err.Error()
		}
		return m[last] > 0, "no sync yet"
	})
	if err != nil {
		return nil, err
	}
	n.settled = func(m metricSet, want cpCounts) (time.Time, bool) {
		// Every change received (the totals), none pending, and the last
		// sync ended after the last one was queued: that sync programmed
		// the final state, and ended at last_timestamp.
		if m["kubeproxy_sync_proxy_rules_endpoint_changes_total"] < want.epChanges ||
			m["kubeproxy_sync_proxy_rules_service_changes_total"] < want.svcChanges ||
			m["kubeproxy_sync_proxy_rules_endpoint_changes_pending"] != 0 ||
			m["kubeproxy_sync_proxy_rules_service_changes_pending"] != 0 ||
			m[last] < m[queued] {
			return time.Time{}, false
		}
		sec, frac := math.Modf(m[last])
		return time.Unix(int64(sec), int64(frac*1e9)), true
	}
	n.count = func(ctx context.Context) (cpCounts, error) { return countKubeProxyRules(ctx, nodeNS, mode) }
	// Let the first sync's follow-ups settle before taking the baseline.
	time.Sleep(time.Second)
	m, err := n.scrape(ctx)
	if err != nil {
		return nil, err
	}
	if n.base, err = n.count(ctx); err != nil {
		return nil, err
	}
	n.base.epChanges = m["kubeproxy_sync_proxy_rules_endpoint_changes_total"]
	n.base.svcChanges = m["kubeproxy_sync_proxy_rules_service_changes_total"]
	return n, nil
}

// countKubeProxyRules counts what kube-proxy programmed: service rules
// (iptables: KUBE-SERVICES jumps to a KUBE-SVC chain; nftables: elements of
// the service-ips map) and endpoints (iptables: KUBE-SEP chains; nftables:
// the DNAT targets of the service chains).
func countKubeProxyRules(ctx context.Context, n ns.NetNS, mode string) (cpCounts, error) {
	var c cpCounts
	if mode == "iptables" {
		out, err := runIn(ctx, n, "", "iptables-legacy-save", "-t", "nat")
		if err != nil {
			return c, err
		}
		for _, l := range strings.Split(out, "\n") {
			switch {
			case strings.HasPrefix(l, "-A KUBE-SERVICES ") && strings.Contains(l, " -j KUBE-SVC-"):
				c.rulesServices++
			case strings.HasPrefix(l, ":KUBE-SEP-"):
				c.rulesEps++
			}
		}
		return c, nil
	}
	out, err := runIn(ctx, n, "", "nft", "list", "table", "ip", "kube-proxy")
	if err != nil {
		return c, err
	}
	// A service chain DNATs to its one endpoint, or to numgen random mod N
	// over a map of N.
	c.rulesServices = strings.Count(out, ": goto service-")
	for _, l := range strings.Split(out, "\n") {
		_, rest, ok := strings.Cut(l, " dnat ")
		if !ok || !strings.HasPrefix(rest, "to ") && !strings.HasPrefix(rest, "ip to ") {
			continue // "ct status dnat ..."
		}
		if _, mod, ok := strings.Cut(rest, "numgen random mod "); ok {
			f := strings.Fields(mod)
			if k, err := strconv.Atoi(f[0]); err == nil {
				c.rulesEps += k
			}
			continue
		}
		c.rulesEps++
	}
	return c, nil
}
