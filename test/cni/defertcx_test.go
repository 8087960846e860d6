package cni_test

import (
	"slices"
	"testing"
	"time"

	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
)

// attachModes lists each attachment as "program@direction@veth mode".
func attachModes(t *testing.T, n *sim.Node) []string {
	t.Helper()
	var out []string
	for _, a := range nodeAttachments(t, n) {
		out = append(out, string(a.Program)+"@"+string(a.Direction)+"@"+a.Ifname+" "+a.Mode)
	}
	slices.Sort(out)
	return out
}

func moveToTCX(t *testing.T, n *sim.Node, quiet time.Duration) int {
	t.Helper()
	var moved int
	if err := n.Do(func() (err error) {
		moved, err = cni.MoveToTCX(n.PinRoot, n.StateDir, quiet)
		return err
	}); err != nil {
		t.Fatalf("MoveToTCX: %v", err)
	}
	return moved
}

// With deferTCX on a tcx node, ADD attaches from_pod and to_pod with
// cls_bpf and records the veth; MoveToTCX leaves it while ADDs are recent,
// then gives it tcx links and takes the filters away; traffic flows before,
// during and after; DEL of a pod still waiting forgets its record.
func TestDeferTCX(t *testing.T) {
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	if f.TCMechanism() != loader.ModeTCX {
		t.Skipf("kernel %s has no tcx: ADD attaches with cls_bpf anyway, deferTCX changes nothing", f.Kernel)
	}
	n := newNode(t, "defertcx", "10.77.11.0/24", sim.WithDeferTCX())
	a, b := addPod(t, n, "a"), addPod(t, n, "b")
	va, vb := cni.HostVethName(a.ContainerID, sim.IfName), cni.HostVethName(b.ContainerID, sim.IfName)
	want := func(mode string, veths ...string) []string {
		var out []string
		for _, v := range veths {
			out = append(out, "from_pod@ingress@"+v+" "+mode, "to_pod@egress@"+v+" "+mode)
		}
		slices.Sort(out)
		return out
	}
	if got, w := attachModes(t, n), want(loader.ModeLegacyTC, va, vb); !slices.Equal(got, w) {
		t.Fatalf("after ADD: %v, want %v", got, w)
	}
	deferred, err := cni.Deferred(n.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(deferred)
	w := []string{va, vb}
	slices.Sort(w)
	if !slices.Equal(deferred, w) {
		t.Fatalf("recorded for tcx: %v, want %v", deferred, w)
	}
	tcpExchange(t, a, b)

	// ADDs a moment ago: not yet.
	if moved := moveToTCX(t, n, time.Hour); moved != 0 {
		t.Fatalf("moved %d while ADDs were recent", moved)
	}
	// Traffic throughout the move.
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := sim.UDPEcho(a, b, []byte("during")); err != nil {
				done <- err
				return
			}
		}
	}()
	moved := moveToTCX(t, n, 0)
	close(stop)
	if err := <-done; err != nil {
		t.Errorf("UDP during the move: %v", err)
	}
	if moved != 2 {
		t.Errorf("moved %d, want 2", moved)
	}
	if got, w := attachModes(t, n), want(loader.ModeTCX, va, vb); !slices.Equal(got, w) {
		t.Fatalf("after the move: %v, want %v (no cls_bpf filter left)", got, w)
	}
	if d, _ := cni.Deferred(n.StateDir); len(d) != 0 {
		t.Errorf("still recorded: %v", d)
	}
	tcpExchange(t, b, a)
	udpExchange(t, a, b)

	// A pod deleted before its move leaves no record.
	c := addPod(t, n, "c")
	if err := libcniDel(t, n, c.RuntimeConf()); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if d, _ := cni.Deferred(n.StateDir); len(d) != 0 {
		t.Errorf("recorded after DEL: %v", d)
	}
	if moved := moveToTCX(t, n, 0); moved != 0 {
		t.Errorf("moved %d after DEL", moved)
	}
}
