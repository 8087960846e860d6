// Package agent_test runs `podpath agent` against a real kube-apiserver and
// etcd (internal/kubetest), on a simulated node in a network namespace
// (internal/sim): Kubernetes objects go in through the API, and what the
// agent programmed is read back from the pinned maps. Needs root.
package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podpath/podpath/internal/kubetest"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
)

const nodeName = "agent-node"

var (
	podCIDR  = netip.MustParsePrefix("10.244.7.0/24")
	nodeAddr = netip.MustParsePrefix("10.250.0.1/24")
	outAddr  = netip.MustParsePrefix("10.250.0.2/24")
)

// env is a node with a control plane and an agent.
type env struct {
	node    *sim.Node
	cluster *kubetest.Cluster
	client  kubernetes.Interface
	bin     string // podpath
	cniBin  string // podpath-cni
	dir     string
	agent   *agentProc
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the agent tests need root (network namespaces, BPF)")
	}
}

func newEnv(t *testing.T, opts ...sim.Option) *env {
	t.Helper()
	requireRoot(t)
	e := &env{dir: t.TempDir()}
	var err error
	if e.bin, err = sim.BuildPodpath(filepath.Join(e.dir, "bin")); err != nil {
		t.Fatal(err)
	}
	cniDir, err := sim.BuildCNI(filepath.Join(e.dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	e.cniBin = filepath.Join(cniDir, sim.PluginType)
	e.node, err = sim.NewNode("agent", podCIDR, append([]sim.Option{sim.WithUplink(nodeAddr, outAddr), sim.WithCNIBin(cniDir)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.node.Close() })
	e.cluster = kubetest.Start(t, e.node.NS, nodeAddr.Addr(), kubetest.Options{})
	e.client = e.cluster.Client
	ctx := context.Background()
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName},
		Spec:       corev1.NodeSpec{PodCIDR: podCIDR.String(), PodCIDRs: []string{podCIDR.String()}},
	}
	n, err = e.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeAddr.Addr().String()}}
	if _, err := e.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

// agentProc is a running `podpath agent`.
type agentProc struct {
	cmd  *exec.Cmd
	log  *bytes.Buffer
	mu   *sync.Mutex
	done chan struct{}
}

// syncWriter serialises writes to the shared log buffer.
type syncWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (s syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// startAgent runs the agent inside the node's namespace, as a DaemonSet
// would run it on the node, and waits until /readyz says it is ready.
func (e *env) startAgent(t *testing.T, bin string, extra ...string) *agentProc {
	t.Helper()
	p := startAgentProc(t, bin, e.node, e.cluster.Kubeconfig, nodeName, e.dir, e.cniBin, extra...)
	e.agent = p
	e.waitReady(t, p)
	return p
}

// startAgentProc starts `podpath agent` for Node nodeName inside node's
// namespace, its CNI files under dir, and kills it when the test ends.
func startAgentProc(t *testing.T, bin string, node *sim.Node, kubeconfig, nodeName, dir, cniBin string, extra ...string) *agentProc {
	t.Helper()
	args := []string{"--net=" + node.NS.Path(), "--", bin,
		"--pin-root", node.PinRoot, "--state-dir", node.StateDir, "agent",
		"--kubeconfig", kubeconfig,
		"--node-name", nodeName,
		"--cni-bin-dir", filepath.Join(dir, "cni-bin"),
		"--cni-conf-dir", filepath.Join(dir, "cni-conf"),
		"--cni-bin-source", cniBin,
		"--no-socket-lb",
		"--node-port-range", "30000-32000",
		"--min-sync-period", "20ms",
		"--reap-period", "1s",
		"-v",
	}
	args = append(args, extra...)
	p := &agentProc{log: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	p.cmd = exec.Command("nsenter", args...)
	w := syncWriter{p.mu, p.log}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	// No Pdeathsig: it fires when the forking thread exits, and Go ends
	// threads that a namespace switch left locked. Cleanup kills it.
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("agent %s log (tail):\n%s", nodeName, p.tail(6000))
		}
	})
	return p
}

func (p *agentProc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.log.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// signal sends sig and waits for the agent to exit.
func (p *agentProc) signal(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// get fetches a URL from inside the node's namespace.
func (e *env) get(url string) (int, string, error) {
	resp, err := e.cluster.HTTPClient().Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func (e *env) waitReady(t *testing.T, p *agentProc) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("agent exited before it was ready:\n%s", p.tail(6000))
		default:
		}
		code, body, err := e.get("http://127.0.0.1:10256/readyz")
		if err == nil && code == http.StatusOK {
			return
		}
		last = fmt.Sprint(code, body, err)
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("agent not ready after 60 s (%s):\n%s", last, p.tail(6000))
}

// metric returns the value of one sample of the agent's /metrics, e.g.
// `podpath_services_skipped{reason="protocol"}`; -1 when absent.
func (e *env) metric(t *testing.T, sample string) float64 {
	t.Helper()
	_, body, err := e.get("http://127.0.0.1:10249/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, sample+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}

// metricSum adds up the samples of a metric whose labels contain label.
func (e *env) metricSum(t *testing.T, name, label string) float64 {
	t.Helper()
	_, body, err := e.get("http://127.0.0.1:10249/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, label) {
			var v float64
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			sum += v
		}
	}
	return sum
}

// frontend is one programmed frontend as the maps hold it.
type frontend struct {
	Active   []string // active backends "ip:port", sorted
	Affinity uint32   // ClientIP affinity timeout, 0 without
	Algo     uint8
}

// programmed reads the service maps: "addr:port/PROTO scope" -> frontend,
// active backends from the frontend's slots.
func (e *env) programmed(t *testing.T) map[string]frontend {
	t.Helper()
	open := func(name string) *ebpf.Map {
		m, err := maps.OpenPinned(e.node.PinRoot, name)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	svcs, slots, backends := open(maps.MapServices), open(maps.MapSvcSlots), open(maps.MapBackends)
	defer svcs.Close()
	defer slots.Close()
	defer backends.Close()
	fe, err := maps.Entries[maps.SvcKey, maps.SvcInfo](svcs)
	if err != nil {
		t.Fatal(err)
	}
	sl, err := maps.Entries[maps.SlotKey, uint32](slots)
	if err != nil {
		t.Fatal(err)
	}
	be, err := maps.Entries[uint32, maps.Backend](backends)
	if err != nil {
		t.Fatal(err)
	}
	addr := func(id uint32) string {
		b, ok := be[id]
		if !ok {
			return fmt.Sprintf("missing-backend-%d", id)
		}
		return netip.AddrPortFrom(maps.AddrFrom16(b.Family, b.Addr), maps.HostPort(b.Port)).String()
	}
	out := map[string]frontend{}
	for k, v := range fe {
		proto := map[uint8]string{6: "TCP", 17: "UDP"}[k.Proto]
		scope := "internal"
		if maps.SvcScope(k.Scope) == maps.ScopeExternal {
			scope = "external"
		}
		name := fmt.Sprintf("%s/%s %s", netip.AddrPortFrom(maps.AddrFrom16(k.Family, k.Addr), maps.HostPort(k.Port)), proto, scope)
		f := frontend{Algo: v.Algo}
		if v.Flags&maps.SvcFlagAffinity != 0 {
			f.Affinity = v.AffinityTimeout
		}
		for s := uint32(1); s <= uint32(v.Backends); s++ {
			id, ok := sl[maps.SlotKey{SvcId: v.Id, Slot: s}]
			if !ok {
				f.Active = append(f.Active, fmt.Sprintf("missing-slot-%d", s))
				continue
			}
			f.Active = append(f.Active, addr(id))
		}
		sort.Strings(f.Active)
		out[name] = f
	}
	return out
}

// terminating lists the backends flagged terminating in the backends map.
func (e *env) terminating(t *testing.T) []string {
	t.Helper()
	m, err := maps.OpenPinned(e.node.PinRoot, maps.MapBackends)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	be, err := maps.Entries[uint32, maps.Backend](m)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range be {
		if b.Flags&maps.BackendFlagTerminating != 0 {
			out = append(out, netip.AddrPortFrom(maps.AddrFrom16(b.Family, b.Addr), maps.HostPort(b.Port)).String())
		}
	}
	sort.Strings(out)
	return out
}

// eventually polls cond until it holds (10 s at most).
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not reached in 10 s; last state:\n%s", what, last)
}

// waitFrontends waits until the frontends whose names start with prefix
// are exactly want.
func (e *env) waitFrontends(t *testing.T, prefix string, want map[string]frontend) {
	t.Helper()
	eventually(t, "frontends of "+prefix, func() (bool, string) {
		got := map[string]frontend{}
		for k, v := range e.programmed(t) {
			if strings.HasPrefix(k, prefix) {
				got[k] = v
			}
		}
		return equalFrontends(got, want), dump(got)
	})
}

func equalFrontends(a, b map[string]frontend) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		y, ok := b[k]
		if !ok || !slices.Equal(x.Active, y.Active) || x.Affinity != y.Affinity || x.Algo != y.Algo {
			return false
		}
	}
	return true
}

func dump(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// checkCNIInstalled checks the agent installed podpath-cni and a conflist
// naming this node's pins.
func (e *env) checkCNIInstalled(t *testing.T) {
	t.Helper()
	want, err := os.ReadFile(e.cniBin)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(e.dir, "cni-bin", "podpath-cni"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("podpath-cni not installed as built (%v)", err)
	}
	b, err := os.ReadFile(filepath.Join(e.dir, "cni-conf", "10-podpath.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type    string `json:"type"`
			PinRoot string `json:"pinRoot"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	if conf.CNIVersion != "1.0.0" || len(conf.Plugins) != 1 || conf.Plugins[0].Type != "podpath-cni" || conf.Plugins[0].PinRoot != e.node.PinRoot {
		t.Fatalf("conflist: %s", b)
	}
}
