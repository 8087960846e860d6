package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// CNI contenders: podpath's plugin and the reference plugins most runtimes
// ship as their default network.
const (
	cniPodpath = "podpath-cni"
	cniBridge  = "bridge+host-local"
	// cniPluginsVersion is the containernetworking/plugins release compared.
	cniPluginsVersion = "v1.10.0"
)

// cniTarget is one plugin setup on its own node namespace, driven through
// libcni as a runtime drives it.
type cniTarget struct {
	name   string
	short  string // for namespace names
	nodeNS ns.NetNS
	cni    *libcni.CNIConfig
	list   *libcni.NetworkConfigList
	// beforeDel, when set, runs between a round's ADDs and DELs, untimed.
	beforeDel func() error
}

// waitMoved waits until the node's mover has put every pod's programs on
// tcx links.
func waitMoved(ctx context.Context, node *sim.Node) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		d, err := cni.Deferred(node.StateDir)
		if err != nil || len(d) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d pods still wait for tcx links after 2 minutes", len(d))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// runCNI times CNI ADD and DEL, one pod at a time and CNIParallel at a
// time, each pod in a fresh network namespace (created and removed outside
// the timing).
func (e *env) runCNI(ctx context.Context) error {
	bin, err := e.podpathCNI()
	if err != nil {
		return err
	}
	// The conflist as the agent writes it (deferTCX), and the agent's
	// mover beside: pods' programs go to tcx links once ADDs are quiet.
	node, closeNode, err := newSimNode("cni", netip.MustParsePrefix("10.245.0.0/16"), sim.WithCNIBin(bin), sim.WithMTU(mtu), sim.WithDeferTCX())
	if err != nil {
		return err
	}
	defer closeNode()
	moverCtx, stopMover := context.WithCancel(ctx)
	moverDone := make(chan struct{})
	go func() {
		defer close(moverDone)
		every := time.NewTicker(500 * time.Millisecond)
		defer every.Stop()
		for {
			select {
			case <-moverCtx.Done():
				return
			case <-every.C:
			}
			if err := node.Do(func() error {
				_, err := cni.MoveToTCX(node.PinRoot, node.StateDir, time.Second)
				return err
			}); err != nil {
				slog.Warn("cni: move to tcx", "err", err)
			}
		}
	}()
	defer func() { stopMover(); <-moverDone }()
	pp := &cniTarget{name: cniPodpath, short: "pp", nodeNS: node.NS, cni: node.CNI(), list: node.NetworkList(),
		// DEL is timed on pods as they live: on tcx links.
		beforeDel: func() error { return waitMoved(ctx, node) }}
	br, closeBr, err := e.bridgeTarget(ctx)
	if err != nil {
		return err
	}
	defer closeBr()

	// podpath-cni writes where each ADD's and DEL's time went.
	timings := filepath.Join(node.StateDir, "cni-timings.jsonl")
	os.Setenv(cni.TimingsEnv, timings)
	defer os.Unsetenv(cni.TimingsEnv)

	targets := []*cniTarget{pp, br}
	modes := []struct {
		name    string
		workers int
	}{{"seq", 1}, {"par", e.cfg.CNIParallel}}
	for rep := range e.cfg.CNIReps {
		if err := e.recordAttachCost(node.NS); err != nil {
			return err
		}
		for _, mode := range modes {
			for _, t := range rotate(targets, rep) {
				os.Remove(timings)
				r, err := cniRound(ctx, t, e.cfg.CNIPods, mode.workers, fmt.Sprintf("%d%s", rep, mode.name))
				if err != nil {
					return fmt.Errorf("%s %s: %w", t.name, mode.name, err)
				}
				if t == pp {
					if err := e.recordCNISteps(timings, mode.name, r); err != nil {
						return err
					}
				}
				for _, v := range []struct {
					verb string
					lat  []float64
				}{{"add", r.add}, {"del", r.del}} {
					verb, lat := v.verb, v.lat
					slices.Sort(lat)
					e.res.record(famCNI, verb+"_"+mode.name+"_p50", t.name, "ms", lower, percentile(lat, 50))
					e.res.record(famCNI, verb+"_"+mode.name+"_p99", t.name, "ms", lower, percentile(lat, 99))
				}
				e.res.record(famCNI, "add_"+mode.name+"_pods_per_s", t.name, "pods/s", higher, float64(e.cfg.CNIPods)/r.addWall.Seconds())
				slog.Info("cni", "rep", rep+1, "mode", mode.name, "plugin", t.name,
					"add_p50_ms", fmt.Sprintf("%.1f", percentile(r.add, 50)), "del_p50_ms", fmt.Sprintf("%.1f", percentile(r.del, 50)))
			}
		}
	}
	return nil
}

type cniRoundResult struct {
	add, del []float64 // ms per pod
	addWall  time.Duration
	// containers are the pods' container IDs, in the order of add and del.
	containers []string
}

// recordCNISteps records, from the plugin's timings file, the median time
// of each step of ADD and DEL over a round's pods, and the time outside
// them: what the runtime's exec of the plugin, the Go runtime's start and
// libcni cost (a pod's whole latency less the plugin's own total).
func (e *env) recordCNISteps(path, mode string, r cniRoundResult) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("podpath-cni timings: %w", err)
	}
	byCmd := map[string]map[string]cni.Timing{"ADD": {}, "DEL": {}}
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var t cni.Timing
		if err := json.Unmarshal(line, &t); err != nil {
			return fmt.Errorf("podpath-cni timings: %q: %w", line, err)
		}
		if m := byCmd[t.Command]; m != nil && !t.Failed {
			m[t.Container] = t
		}
	}
	for _, v := range []struct {
		cmd, verb string
		lat       []float64
	}{{"ADD", "add", r.add}, {"DEL", "del", r.del}} {
		steps := map[string][]float64{}
		var order []string
		for i, id := range r.containers {
			t, ok := byCmd[v.cmd][id]
			if !ok {
				return fmt.Errorf("podpath-cni timings: no %s of container %s", v.cmd, id)
			}
			for _, st := range t.Steps {
				if _, seen := steps[st.Name]; !seen {
					order = append(order, st.Name)
				}
				steps[st.Name] = append(steps[st.Name], st.US/1e3)
			}
			steps["outside_plugin"] = append(steps["outside_plugin"], v.lat[i]-t.TotalUS/1e3)
		}
		for _, name := range append(order, "outside_plugin") {
			_, med, _ := minMedMax(steps[name])
			e.res.record(famCNI, fmt.Sprintf("%s_%s_step_%s", v.verb, mode, name), cniPodpath, "ms", lower, med)
		}
	}
	return nil
}

// cniRound adds n pods with `workers` ADDs in flight, then deletes them the
// same way.
func cniRound(ctx context.Context, t *cniTarget, n, workers int, tag string) (r cniRoundResult, err error) {
	type pod struct {
		rt *libcni.RuntimeConf
		ns ns.NetNS
	}
	pods := make([]pod, n)
	var removers []func() error
	defer func() {
		if cerr := closeAll(removers); cerr != nil && err == nil {
			err = cerr
		}
	}()
	for i := range pods {
		pns, rm, err := newNS("cni", t.short, tag, strconv.Itoa(i))
		if err != nil {
			return r, err
		}
		removers = append(removers, rm)
		pods[i] = pod{ns: pns, rt: &libcni.RuntimeConf{
			ContainerID: containerID(),
			NetNS:       pns.Path(),
			IfName:      "eth0",
			Args: [][2]string{
				{"IgnoreUnknown", "1"},
				{"K8S_POD_NAMESPACE", "bench"},
				{"K8S_POD_NAME", fmt.Sprintf("pod-%s-%d", tag, i)},
			},
		}}
	}
	for _, p := range pods {
		r.containers = append(r.containers, p.rt.ContainerID)
	}
	added := make([]bool, n)
	defer func() {
		// A failed round leaves no attachment behind.
		for i, ok := range added {
			if ok {
				t.nodeNS.Do(func(ns.NetNS) error { return t.cni.DelNetworkList(context.Background(), t.list, pods[i].rt) })
			}
		}
	}()

	each := func(op func(i int) error) ([]float64, time.Duration, error) {
		lat := make([]float64, n)
		next := make(chan int)
		errc := make(chan error, workers)
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					t0 := time.Now()
					if err := op(i); err != nil {
						errc <- err
						return
					}
					lat[i] = float64(time.Since(t0).Microseconds()) / 1e3
				}
			}()
		}
	feed:
		for i := range n {
			select {
			case next <- i:
			case err := <-errc:
				errc <- err
				break feed
			case <-ctx.Done():
				break feed
			}
		}
		close(next)
		wg.Wait()
		wall := time.Since(start)
		select {
		case err := <-errc:
			return nil, 0, err
		default:
		}
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		return lat, wall, nil
	}

	r.add, r.addWall, err = each(func(i int) error {
		return t.nodeNS.Do(func(ns.NetNS) error {
			_, err := t.cni.AddNetworkList(ctx, t.list, pods[i].rt)
			if err == nil {
				added[i] = true
			}
			return err
		})
	})
	if err != nil {
		return r, fmt.Errorf("ADD: %w", err)
	}
	if t.beforeDel != nil {
		if err := t.beforeDel(); err != nil {
			return r, err
		}
	}
	r.del, _, err = each(func(i int) error {
		return t.nodeNS.Do(func(ns.NetNS) error {
			err := t.cni.DelNetworkList(ctx, t.list, pods[i].rt)
			if err == nil {
				added[i] = false
			}
			return err
		})
	})
	if err != nil {
		return r, fmt.Errorf("DEL: %w", err)
	}
	return r, nil
}

// bridgeTarget sets up the reference plugins on a fresh node namespace: the
// bridge plugin (cni0 as the pods' gateway, no masquerade: podpath's ADD
// sets up no NAT either) with host-local IPAM.
func (e *env) bridgeTarget(ctx context.Context) (*cniTarget, func() error, error) {
	binDir, err := e.referencePlugins(ctx)
	if err != nil {
		return nil, nil, err
	}
	tmp, err := os.MkdirTemp("", "podpath-bench-cni-")
	if err != nil {
		return nil, nil, err
	}
	rmTmp := cleanup.add("dir "+tmp, func() error { return os.RemoveAll(tmp) })
	nodeNS, rmNS, err := newNS("cni", "bridge-node")
	if err != nil {
		rmTmp()
		return nil, nil, err
	}
	closer := closeAllFn(rmTmp, rmNS)
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       "bench-bridge",
		"plugins": []map[string]any{{
			"type":      "bridge",
			"bridge":    "cni0",
			"isGateway": true,
			"ipMasq":    false,
			"mtu":       mtu,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": "10.246.0.0/16"}}},
				"dataDir": filepath.Join(tmp, "host-local"),
			},
		}},
	}
	b, err := json.Marshal(conf)
	if err != nil {
		closer()
		return nil, nil, err
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		closer()
		return nil, nil, err
	}
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: discard}, PluginDecoder: version.PluginDecoder{}}
	c := libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(tmp, "cache"), exec)
	return &cniTarget{name: cniBridge, short: "br", nodeNS: nodeNS, cni: c, list: list}, closer, nil
}

// referencePlugins builds the bridge and host-local plugins once into
// bench/.cache.
func (e *env) referencePlugins(ctx context.Context) (string, error) {
	dir := filepath.Join(e.srcDir, ".cache", "cni-plugins-"+cniPluginsVersion)
	have := true
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			have = false
		}
	}
	if have {
		return dir, nil
	}
	slog.Info("building the reference CNI plugins", "version", cniPluginsVersion, "into", dir)
	cmd := exec.CommandContext(ctx, "go", "install",
		"github.com/containernetworking/plugins/plugins/main/bridge@"+cniPluginsVersion,
		"github.com/containernetworking/plugins/plugins/ipam/host-local@"+cniPluginsVersion)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build reference CNI plugins: %w\n%s", err, out)
	}
	return dir, nil
}

func containerID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// attachSamples is how many fresh veths each repetition attaches to.
const attachSamples = 20

// recordAttachCost times attaching a no-op tc program to a fresh veth in
// the node's namespace, as ADD attaches from_pod and to_pod: by tcx (a BPF
// link; the kernel waits for an RCU grace period on every attach) and by
// legacy tc (a clsact qdisc and a cls_bpf filter). Medians of attachSamples.
func (e *env) recordAttachCost(nodeNS ns.NetNS) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		return err
	}
	defer prog.Close()
	var tcx, legacy []float64
	err = nodeNS.Do(func(ns.NetNS) error {
		for i := range attachSamples {
			name := fmt.Sprintf("ppattach%d", i)
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
				return fmt.Errorf("veth %s: %w", name, err)
			}
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			idx := l.Attrs().Index
			t0 := time.Now()
			lk, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: prog, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				netlink.LinkDel(l)
				return fmt.Errorf("tcx attach: %w", err)
			}
			tcx = append(tcx, float64(time.Since(t0).Microseconds())/1e3)
			lk.Close()
			t0 = time.Now()
			qdisc := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
			if err := netlink.QdiscAdd(qdisc); err != nil {
				netlink.LinkDel(l)
				return fmt.Errorf("clsact: %w", err)
			}
			filter := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1},
				Fd: prog.FD(), Name: "noop", DirectAction: true}
			if err := netlink.FilterAdd(filter); err != nil {
				netlink.LinkDel(l)
				return fmt.Errorf("cls_bpf: %w", err)
			}
			legacy = append(legacy, float64(time.Since(t0).Microseconds())/1e3)
			if err := netlink.LinkDel(l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("attach cost: %w", err)
	}
	_, med, _ := minMedMax(tcx)
	e.res.record(famCNI, "tcx_attach", "kernel", "ms", lower, med)
	_, med, _ = minMedMax(legacy)
	e.res.record(famCNI, "legacy_tc_attach", "kernel", "ms", lower, med)
	return nil
}
