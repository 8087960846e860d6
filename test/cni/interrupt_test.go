package cni_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/vishvananda/netlink"
)

// heldAdd starts an ADD of a new pod (container ID id) that stops itself
// right after step, and returns once it has.
func heldAdd(t *testing.T, n *sim.Node, id, step string) (*plugin, ns.NetNS) {
	t.Helper()
	pod, err := sim.NewNetNS(n.Name, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.RemoveNetNS(pod) })
	p, err := pluginCall{Command: "ADD", ContainerID: id, Netns: pod.Path(), IfName: sim.IfName,
		Stdin: pluginConf(t, n, nil), Env: []string{cni.PauseEnv + "=" + step}}.start(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.kill)
	if err := p.paused(); err != nil {
		t.Fatal(err)
	}
	return p, pod
}

// gc runs the plugin's GC with the given pods as the valid attachments.
func gc(t *testing.T, n *sim.Node, valid ...*sim.Pod) {
	t.Helper()
	atts := []types.GCAttachment{}
	for _, p := range valid {
		atts = append(atts, types.GCAttachment{ContainerID: p.ContainerID, IfName: sim.IfName})
	}
	if _, cerr := (pluginCall{Command: "GC", Stdin: pluginConf(t, n, map[string]any{"cni.dev/valid-attachments": atts})}).run(t, n); cerr != nil {
		t.Fatalf("GC: %v", cerr)
	}
}

// nodeState is everything of the node's attachments the tests compare.
func nodeState(t *testing.T, n *sim.Node) string {
	t.Helper()
	return fmt.Sprint(allocations(t, n), endpoints(t, n), hostVeths(t, n), attachedVeths(t, n), len(nodeRoutes(t, n)))
}

// eachStep runs fn in a subtest for each step of ADD, on one node with a
// pod, keep, that must come through all of them untouched.
func eachStep(t *testing.T, node, cidr string, fn func(t *testing.T, n *sim.Node, keep *sim.Pod, step string)) {
	n := newNode(t, node, cidr)
	keep := addPod(t, n, "keep")
	for _, step := range cni.Steps {
		t.Run(step, func(t *testing.T) { fn(t, n, keep, step) })
	}
	if err := n.CheckPod(testContext(t), keep); err != nil {
		t.Errorf("CHECK keep: %v", err)
	}
}

// An ADD killed (SIGKILL) after any of its steps leaves what the DEL a
// runtime sends after a failed ADD removes, whether the pod's namespace is
// still there or already gone.
func TestAddKilledThenDel(t *testing.T) {
	eachStep(t, "killdel", "10.77.18.0/24", func(t *testing.T, n *sim.Node, _ *sim.Pod, step string) {
		for _, nsGone := range []bool{false, true} {
			t.Run(fmt.Sprintf("netns-gone=%v", nsGone), func(t *testing.T) {
				id := fmt.Sprintf("killed-%s-%v", step, nsGone)
				p, pod := heldAdd(t, n, id, step)
				p.kill()
				netns := pod.Path()
				if nsGone {
					if err := sim.RemoveNetNS(pod); err != nil {
						t.Fatal(err)
					}
					pod = nil
				}
				if _, cerr := (pluginCall{Command: "DEL", ContainerID: id, Netns: netns, IfName: sim.IfName,
					Stdin: pluginConf(t, n, nil)}).run(t, n); cerr != nil {
					t.Fatalf("DEL: %v", cerr)
				}
				assertNoPartialState(t, n, pod, 1)
			})
		}
	})
}

// An ADD killed after any of its steps whose DEL never comes (the runtime
// went down with it) is removed by a GC that does not list it.
func TestAddKilledThenGC(t *testing.T) {
	eachStep(t, "killgc", "10.77.19.0/24", func(t *testing.T, n *sim.Node, keep *sim.Pod, step string) {
		p, _ := heldAdd(t, n, "killed-"+step, step)
		p.kill()
		gc(t, n, keep)
		assertNoPartialState(t, n, nil, 1)
	})
}

// GC never removes what an ADD still running has made, though the runtime
// left it out of the valid list: the ADD is held after each of its steps
// while GC runs, then resumes, succeeds and passes CHECK; the next GC,
// with the ADD over, removes it.
func TestGCSparesAddInFlight(t *testing.T) {
	eachStep(t, "gcinflight", "10.77.20.0/24", func(t *testing.T, n *sim.Node, keep *sim.Pod, step string) {
		id := "inflight-" + step
		p, pod := heldAdd(t, n, id, step)
		before := nodeState(t, n)
		gc(t, n, keep)
		if after := nodeState(t, n); after != before {
			t.Errorf("GC changed the node while an ADD was held after %s:\nbefore %s\nafter  %s", step, before, after)
		}
		if err := p.resume(); err != nil {
			t.Fatal(err)
		}
		result, cerr, err := p.wait()
		if err != nil || cerr != nil {
			t.Fatalf("ADD resumed after GC: %v %v", cerr, err)
		}
		if _, cerr := (pluginCall{Command: "CHECK", ContainerID: id, Netns: pod.Path(), IfName: sim.IfName,
			Stdin: pluginConf(t, n, map[string]any{"prevResult": json.RawMessage(result)})}).run(t, n); cerr != nil {
			t.Errorf("CHECK after the resumed ADD: %v", cerr)
		}
		gc(t, n, keep)
		assertNoPartialState(t, n, pod, 1)
	})
}

// A DEL sent while the attachment's ADD still runs (its runtime gave up
// waiting) waits for the ADD, then removes everything it made.
func TestDelWaitsForAdd(t *testing.T) {
	n := newNode(t, "delwaits", "10.77.22.0/24")
	add, pod := heldAdd(t, n, "slow", cni.StepEndpoint)
	del, err := pluginCall{Command: "DEL", ContainerID: "slow", Netns: pod.Path(), IfName: sim.IfName,
		Stdin: pluginConf(t, n, nil)}.start(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(del.kill)
	select {
	case <-del.exited:
		t.Fatal("DEL finished while the ADD was held")
	case <-time.After(300 * time.Millisecond):
	}
	if err := add.resume(); err != nil {
		t.Fatal(err)
	}
	if _, cerr, err := add.wait(); err != nil || cerr != nil {
		t.Fatalf("ADD: %v %v", cerr, err)
	}
	if _, cerr, err := del.wait(); err != nil || cerr != nil {
		t.Fatalf("DEL: %v %v", cerr, err)
	}
	assertNoPartialState(t, n, pod, 0)
}

// CHECK and GC work while other processes add and remove devices on the
// node: a netlink dump the kernel flags as interrupted by such a change is
// taken again rather than failing the verb. The node has enough devices
// for a dump to take several messages, which is when the kernel can tell.
func TestCheckAndGCWhileDevicesChange(t *testing.T) {
	n := newNode(t, "churn", "10.77.21.0/24")
	a := addPod(t, n, "a")
	veth := func(name string) *netlink.Veth {
		return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	}
	if err := n.Do(func() error {
		for i := range 100 {
			if err := netlink.LinkAdd(veth(fmt.Sprintf("static%d", i))); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	churned := make(chan error, 1)
	go func() {
		churned <- n.Do(func() error {
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				if err := netlink.LinkAdd(veth("churn")); err != nil {
					return err
				}
				if err := netlink.LinkDel(veth("churn")); err != nil {
					return err
				}
				time.Sleep(time.Millisecond)
			}
		})
	}()
	t.Cleanup(func() {
		close(stop)
		if err := <-churned; err != nil {
			t.Errorf("churn: %v", err)
		}
	})
	for range 3 {
		if err := n.CheckPod(testContext(t), a); err != nil {
			t.Errorf("CHECK: %v", err)
		}
		gc(t, n, a)
	}
}
