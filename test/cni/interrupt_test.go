package cni_test

import (
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

// An ADD killed (SIGKILL) after any of its steps leaves what the DEL a
// runtime sends after a failed ADD removes, whether the pod's namespace is
// still there or already gone; a pod added before is untouched.
func TestAddKilledThenDel(t *testing.T) {
	n := newNode(t, "killdel", "10.77.18.0/24")
	keep := addPod(t, n, "keep")
	for _, step := range cni.Steps {
		for _, nsGone := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/netns-gone=%v", step, nsGone), func(t *testing.T) {
				id := "killed-" + step
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
	}
	if err := n.CheckPod(testContext(t), keep); err != nil {
		t.Errorf("CHECK keep: %v", err)
	}
}

// An ADD killed after any of its steps whose DEL never comes (the runtime
// went down with it) is removed by a GC that does not list it.
func TestAddKilledThenGC(t *testing.T) {
	n := newNode(t, "killgc", "10.77.19.0/24")
	keep := addPod(t, n, "keep")
	for _, step := range cni.Steps {
		t.Run(step, func(t *testing.T) {
			p, pod := heldAdd(t, n, "killed-"+step, step)
			p.kill()
			gc(t, n, keep)
			assertNoPartialState(t, n, nil, 1)
			if err := sim.RemoveNetNS(pod); err != nil {
				t.Fatal(err)
			}
		})
	}
	if err := n.CheckPod(testContext(t), keep); err != nil {
		t.Errorf("CHECK keep: %v", err)
	}
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
