package cni_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
)

// 1,000 pods are added and deleted through the plugin binary, 8 at a time,
// with what goes wrong on a busy node: ADDs killed (SIGKILL) after each of
// their steps in turn or after a random delay, then deleted, or forgotten
// by a runtime that went down with them; namespaces removed before DEL;
// DEL repeated; GC run while ADDs and DELs are running, each time while one
// ADD the GC leaves out of its valid list is held at one of its steps. At
// the end, after the GC a restarted runtime sends, nothing is left but the
// pods kept: no address, endpoint entry, veth, node route, attached
// program, link pin or state file; the kept pods pass CHECK and talk. It
// logs pods per second, ADD and DEL p50 and p99, and what the kills and
// GCs did.
func TestEndurance(t *testing.T) {
	const total, parallel = 1000, 8
	n := newNode(t, "endure", "10.77.32.0/22")
	r := newRuntime(t, n)
	t.Cleanup(func() {
		for _, p := range r.keptPods() {
			sim.RemoveNetNS(p.NS)
		}
	})
	progsBefore := pinnedPrograms(t, n)

	jobs := make(chan int)
	var wg sync.WaitGroup
	for range parallel {
		wg.Go(func() {
			for i := range jobs {
				r.lifecycle(i)
			}
		})
	}
	start := time.Now()
	for i := range total {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)

	r.gc(nil) // the valid list of a runtime restarted with only the kept pods
	kept := r.keptPods()
	assertOnlyPods(t, n, kept)
	if got := pinnedPrograms(t, n); !slices.Equal(got, progsBefore) {
		t.Errorf("pinned programs: %v, before the run %v", got, progsBefore)
	}
	for _, p := range kept {
		r.check(p)
	}
	if len(kept) >= 2 {
		tcpExchange(t, kept[0], kept[len(kept)-1])
		udpExchange(t, kept[len(kept)-1], kept[0])
	}
	for _, p := range kept {
		r.del(p, p.NS.Path())
	}
	assertOnlyPods(t, n, nil)

	r.report(t, total, elapsed)
}

// runtime plays the container runtime of the endurance run: it runs the
// plugin binary for each verb and remembers the attachments it has not
// deleted (running ADDs included), which its GCs list as valid. As the spec
// asks, it starts no ADD or DEL while a GC runs; unlike what it asks, the
// ADDs and DELs already running go on meanwhile.
type runtime struct {
	t    *testing.T
	n    *sim.Node
	conf map[string]any // the plugin's configuration, as libcni derives it
	gcMu sync.RWMutex   // held to start a verb (read) and to GC (write)

	mu       sync.Mutex
	known    map[string]bool // container IDs
	kept     []*sim.Pod
	addTimes []time.Duration
	delTimes []time.Duration
	killed   map[string]int // ADDs that died of a kill, by where
	gcDid    map[string]int // what the GCs logged doing, by message
}

func newRuntime(t *testing.T, n *sim.Node) *runtime {
	r := &runtime{t: t, n: n, known: map[string]bool{}, killed: map[string]int{}, gcDid: map[string]int{}}
	if err := json.Unmarshal(pluginConf(t, n, nil), &r.conf); err != nil {
		t.Fatal(err)
	}
	return r
}

// lifecycle is pod i's life; i decides what goes wrong in it. Of 1,000:
// 20 kept to the end, 100 killed after a step (each step 20 times), 100
// killed after a random delay (a quarter of the killed forgotten, the rest
// deleted), 40 held while a GC runs; every pod that is added passes CHECK
// before it is deleted, in one of four ways.
func (r *runtime) lifecycle(i int) {
	p := &sim.Pod{Name: fmt.Sprintf("p%04d", i), ContainerID: fmt.Sprintf("endure-%04d", i)}
	var err error
	if p.NS, err = sim.NewNetNS(r.n.Name, p.Name); err != nil {
		r.t.Error(err)
		return
	}
	defer func() {
		if p.NS != nil && !slices.Contains(r.keptPods(), p) {
			sim.RemoveNetNS(p.NS)
		}
	}()
	netns := p.NS.Path()
	r.setKnown(p, true)

	var ok bool
	killed := i%10 == 3 || i%10 == 6
	switch {
	case i%50 == 7: // kept to the end
		if r.add(p) && r.check(p) {
			r.mu.Lock()
			r.kept = append(r.kept, p)
			r.mu.Unlock()
		}
		return
	case i%10 == 3: // killed after a step
		ok = r.addKilledAt(p, cni.Steps[i/10%len(cni.Steps)])
	case i%10 == 6: // killed after a random delay
		ok = r.addKilledAfter(p, r.killDelay())
	case i%25 == 0: // held while GC runs
		ok = r.addHeldForGC(p, cni.Steps[i/25%len(cni.Steps)])
	default:
		ok = r.add(p) && r.check(p)
	}
	if !ok && killed && i/10%4 == 0 {
		// A failed ADD whose runtime went down with it: no DEL comes, a
		// GC must clean up.
		sim.RemoveNetNS(p.NS)
		p.NS = nil
		r.setKnown(p, false)
		return
	}
	r.deleteVariant(p, netns, i%4)
}

// deleteVariant deletes a pod in one of the ways runtimes do.
func (r *runtime) deleteVariant(p *sim.Pod, netns string, variant int) {
	removeNS := func() {
		if err := sim.RemoveNetNS(p.NS); err != nil {
			r.t.Error(err)
		}
		p.NS = nil
	}
	switch variant {
	case 0:
		r.del(p, netns)
	case 1: // the namespace is gone before DEL, which still names it
		removeNS()
		r.del(p, netns)
	case 2: // DEL, then again without a namespace at sandbox removal
		r.del(p, netns)
		removeNS()
		r.del(p, "")
	case 3:
		removeNS()
		r.del(p, "")
		r.del(p, netns)
	}
	r.setKnown(p, false)
}

func (r *runtime) setKnown(p *sim.Pod, known bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if known {
		r.known[p.ContainerID] = true
	} else {
		delete(r.known, p.ContainerID)
	}
}

func (r *runtime) keptPods() []*sim.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.kept)
}

// stdin is the plugin configuration with fields added.
func (r *runtime) stdin(extra map[string]any) []byte {
	m := map[string]any{}
	for k, v := range r.conf {
		m[k] = v
	}
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		r.t.Error(err)
	}
	return b
}

func (r *runtime) start(verb string, p *sim.Pod, netns string, stdin []byte, env ...string) *plugin {
	r.gcMu.RLock()
	defer r.gcMu.RUnlock()
	pl, err := pluginCall{Command: verb, ContainerID: p.ContainerID, Netns: netns, IfName: sim.IfName,
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=endure;K8S_POD_NAME=" + p.Name, Stdin: stdin, Env: env}.start(r.n)
	if err != nil {
		r.t.Errorf("%s %s: %v", verb, p.Name, err)
		return nil
	}
	return pl
}

// finishAdd waits for an ADD and records its result in p.
func (r *runtime) finishAdd(pl *plugin, p *sim.Pod) bool {
	out, cerr, err := pl.wait()
	if err != nil || cerr != nil {
		r.t.Errorf("ADD %s: %v %v", p.Name, cerr, err)
		return false
	}
	return r.record(p, out)
}

// record keeps a successful ADD's result in p.
func (r *runtime) record(p *sim.Pod, out []byte) bool {
	res, err := types100.NewResult(out)
	if err == nil {
		p.Result, err = types100.NewResultFromResult(res)
	}
	if err != nil {
		r.t.Errorf("ADD %s result: %v", p.Name, err)
		return false
	}
	p.IP, _ = netip.AddrFromSlice(p.Result.IPs[0].Address.IP.To4())
	return true
}

// add runs an ADD to its end and times it.
func (r *runtime) add(p *sim.Pod) bool {
	t0 := time.Now()
	pl := r.start("ADD", p, p.NS.Path(), r.stdin(nil))
	if pl == nil || !r.finishAdd(pl, p) {
		return false
	}
	r.mu.Lock()
	r.addTimes = append(r.addTimes, time.Since(t0))
	r.mu.Unlock()
	return true
}

// addHeld starts an ADD that holds after step; nil if it never got there.
func (r *runtime) addHeld(p *sim.Pod, step string) *plugin {
	pl := r.start("ADD", p, p.NS.Path(), r.stdin(nil), cni.PauseEnv+"="+step)
	if pl == nil {
		return nil
	}
	if err := pl.paused(); err != nil {
		r.t.Errorf("ADD %s: %v", p.Name, err)
		pl.kill()
		return nil
	}
	return pl
}

// addKilledAt kills an ADD held after step.
func (r *runtime) addKilledAt(p *sim.Pod, step string) bool {
	if pl := r.addHeld(p, step); pl != nil {
		pl.kill()
		r.countKill(step)
	}
	return false
}

// addKilledAfter kills an ADD after delay, if it is still running then.
func (r *runtime) addKilledAfter(p *sim.Pod, delay time.Duration) bool {
	pl := r.start("ADD", p, p.NS.Path(), r.stdin(nil))
	if pl == nil {
		return false
	}
	timer := time.AfterFunc(delay, func() { pl.cmd.Process.Kill() })
	out, cerr, err := pl.wait()
	timer.Stop()
	if err == nil && cerr == nil {
		// It finished first: a successful ADD.
		r.countKill("random, too late")
		return r.record(p, out) && r.check(p)
	}
	if pl.cmd.ProcessState.ExitCode() != -1 {
		r.t.Errorf("ADD %s failed without being killed: %v %v", p.Name, cerr, err)
		return false
	}
	r.countKill("random")
	return false
}

// addHeldForGC holds an ADD after step, runs a GC that leaves it out of
// the valid list, then lets the ADD finish: it must succeed and pass CHECK.
func (r *runtime) addHeldForGC(p *sim.Pod, step string) bool {
	pl := r.addHeld(p, step)
	if pl == nil {
		return false
	}
	defer pl.kill()
	r.gc(p)
	if err := pl.resume(); err != nil {
		r.t.Error(err)
		return false
	}
	if !r.finishAdd(pl, p) {
		r.t.Errorf("ADD %s held after %s failed once resumed after a GC", p.Name, step)
		return false
	}
	return r.check(p)
}

// killDelay is a random delay within about the time an ADD takes here, so
// kills land all along it (and a few after its end).
func (r *runtime) killDelay() time.Duration {
	r.mu.Lock()
	typical := percentile(r.addTimes, 50)
	r.mu.Unlock()
	if typical == 0 {
		typical = 50 * time.Millisecond
	}
	return time.Duration(rand.Int64N(int64(typical * 3 / 2)))
}

func (r *runtime) countKill(where string) {
	r.mu.Lock()
	r.killed[where]++
	r.mu.Unlock()
}

// check runs CHECK on an added pod.
func (r *runtime) check(p *sim.Pod) bool {
	prev, err := json.Marshal(p.Result)
	if err != nil {
		r.t.Error(err)
		return false
	}
	pl := r.start("CHECK", p, p.NS.Path(), r.stdin(map[string]any{"prevResult": json.RawMessage(prev)}))
	if pl == nil {
		return false
	}
	if _, cerr, err := pl.wait(); err != nil || cerr != nil {
		r.t.Errorf("CHECK %s: %v %v", p.Name, cerr, err)
		return false
	}
	return true
}

// del runs a DEL, which must succeed, and times it.
func (r *runtime) del(p *sim.Pod, netns string) {
	t0 := time.Now()
	pl := r.start("DEL", p, netns, r.stdin(nil))
	if pl == nil {
		return
	}
	if _, cerr, err := pl.wait(); err != nil || cerr != nil {
		r.t.Errorf("DEL %s (netns %q): %v %v", p.Name, netns, cerr, err)
		return
	}
	r.mu.Lock()
	r.delTimes = append(r.delTimes, time.Since(t0))
	r.mu.Unlock()
}

// gc runs a GC listing every attachment the runtime knows but except's.
func (r *runtime) gc(except *sim.Pod) {
	r.gcMu.Lock()
	defer r.gcMu.Unlock()
	r.mu.Lock()
	valid := []types.GCAttachment{}
	for id := range r.known {
		if except == nil || id != except.ContainerID {
			valid = append(valid, types.GCAttachment{ContainerID: id, IfName: sim.IfName})
		}
	}
	r.mu.Unlock()
	pl, err := pluginCall{Command: "GC", Stdin: r.stdin(map[string]any{"cni.dev/valid-attachments": valid})}.start(r.n)
	if err != nil {
		r.t.Error(err)
		return
	}
	if _, cerr, err := pl.wait(); err != nil || cerr != nil {
		r.t.Errorf("GC: %v %v", cerr, err)
	}
	r.mu.Lock()
	for _, m := range gcMessage.FindAllStringSubmatch(pl.stderr.String(), -1) {
		r.gcDid[m[1]]++
	}
	r.mu.Unlock()
}

var gcMessage = regexp.MustCompile(`msg="gc: ([^"]*)"`)

func (r *runtime) report(t *testing.T, total int, elapsed time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t.Logf("%d pods in %.1fs: %.1f pods/s; killed ADDs %v", total, elapsed.Seconds(), float64(total)/elapsed.Seconds(), r.killed)
	t.Logf("GCs did %v", r.gcDid)
	t.Logf("ADD p50 %v p99 %v (%d); DEL p50 %v p99 %v (%d)",
		percentile(r.addTimes, 50), percentile(r.addTimes, 99), len(r.addTimes),
		percentile(r.delTimes, 50), percentile(r.delTimes, 99), len(r.delTimes))
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)*p/100].Round(100 * time.Microsecond)
}

// assertOnlyPods fails when the node has anything of an attachment but
// the given pods': addresses, endpoint entries, host veths, node routes,
// attached programs and link pins, and files in the IPAM directory.
func assertOnlyPods(t *testing.T, n *sim.Node, pods []*sim.Pod) {
	t.Helper()
	var wantAddrs, wantVeths, wantAtts []string
	for _, p := range pods {
		veth := cni.HostVethName(p.ContainerID, sim.IfName)
		wantAddrs = append(wantAddrs, p.IP.String())
		wantVeths = append(wantVeths, veth)
		wantAtts = append(wantAtts, "from_pod@ingress@"+veth, "to_pod@egress@"+veth)
	}
	sort.Strings(wantAddrs)
	sort.Strings(wantVeths)
	sort.Strings(wantAtts)
	equal := func(what string, got, want []string) {
		t.Helper()
		sort.Strings(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: %d %v, want %d %v", what, len(got), got, len(want), want)
		}
	}
	equal("addresses", allocations(t, n), wantAddrs)
	var eps []string
	for _, ep := range endpoints(t, n) {
		eps = append(eps, ep.IP.String())
	}
	equal("endpoint entries", eps, wantAddrs)
	equal("host veths", hostVeths(t, n), wantVeths)
	equal("attachments", attachedVeths(t, n), wantAtts)
	if r := nodeRoutes(t, n); len(r) != len(pods) {
		t.Errorf("%d node routes, want %d", len(r), len(pods))
	}
	var files []string
	entries, err := os.ReadDir(cni.IPAMDir(n.StateDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err != nil {
			files = append(files, e.Name())
		}
	}
	equal("other files in the node's IPAM directory", files, []string{"last_reserved", "lock"})
	files = nil
	if entries, err = os.ReadDir(filepath.Join(n.StateDir, "ipam", n.NetName)); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		files = append(files, e.Name())
	}
	equal("files in the network's IPAM directory", files, []string{"attachments.lock"})
	var pins []string
	if err := filepath.WalkDir(maps.LinkDir(n.PinRoot), func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			pins = append(pins, d.Name())
		}
		return err
	}); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(pins) > len(wantAtts) {
		t.Errorf("link pins: %v, want at most %v", pins, wantAtts)
	}
}

// pinnedPrograms lists the node's program pins.
func pinnedPrograms(t *testing.T, n *sim.Node) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Dir(maps.ProgPath(n.PinRoot, maps.ProgFromPod)))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}
