package cni_test

import (
	"os"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
)

// GC releases every attachment not in cni.dev/valid-attachments (address,
// endpoint, veth, attached program), including one whose address record was lost,
// and keeps the valid ones working.
func TestGCKeepsOnlyValidAttachments(t *testing.T) {
	n := newNode(t, "gc", "10.77.10.0/24")
	a, c, d := addPod(t, n, "a"), addPod(t, n, "c"), addPod(t, n, "d")
	addPod(t, n, "b")
	// d's address record is lost: GC must find its veth by the network's label.
	if err := os.Remove(cni.AddressFile(n.StateDir, n.NetName, d.IP)); err != nil {
		t.Fatal(err)
	}

	valid := []types.GCAttachment{
		{ContainerID: a.ContainerID, IfName: sim.IfName},
		{ContainerID: c.ContainerID, IfName: sim.IfName},
	}
	_, cerr := pluginCall{
		Command: "GC",
		Stdin:   pluginConf(t, n, map[string]any{"cni.dev/valid-attachments": valid}),
	}.run(t, n)
	if cerr != nil {
		t.Fatalf("GC: %v", cerr)
	}

	wantVeths := []string{cni.HostVethName(a.ContainerID, sim.IfName), cni.HostVethName(c.ContainerID, sim.IfName)}
	slices.Sort(wantVeths)
	gotVeths := hostVeths(t, n)
	slices.Sort(gotVeths)
	if !slices.Equal(gotVeths, wantVeths) {
		t.Errorf("host veths after GC: %v, want %v", gotVeths, wantVeths)
	}
	wantAddrs := []string{a.IP.String(), c.IP.String()}
	slices.Sort(wantAddrs)
	if got := allocations(t, n); !slices.Equal(got, wantAddrs) {
		t.Errorf("addresses after GC: %v, want %v", got, wantAddrs)
	}
	var gotEps []string
	for _, ep := range endpoints(t, n) {
		gotEps = append(gotEps, ep.IP.String())
	}
	if !slices.Equal(gotEps, wantAddrs) {
		t.Errorf("endpoints after GC: %v, want %v", gotEps, wantAddrs)
	}
	var wantAtts []string
	for _, v := range wantVeths {
		wantAtts = append(wantAtts, "from_pod@ingress@"+v)
	}
	slices.Sort(wantAtts)
	if got := attachedVeths(t, n); !slices.Equal(got, wantAtts) {
		t.Errorf("attachments after GC: %v, want %v", got, wantAtts)
	}

	for _, p := range []*sim.Pod{a, c} {
		if err := n.CheckPod(testContext(t), p); err != nil {
			t.Errorf("CHECK %s after GC: %v", p.Name, err)
		}
	}
	tcpExchange(t, a, c)
	udpExchange(t, c, a)

	// libcni's GC (DEL of cached attachments, then the plugin's GC) agrees.
	if err := n.GC(testContext(t), a, c); err != nil {
		t.Fatalf("libcni GC: %v", err)
	}
	if err := n.GC(testContext(t), a); err != nil {
		t.Fatalf("libcni GC keeping a: %v", err)
	}
	if got := allocations(t, n); !slices.Equal(got, []string{a.IP.String()}) {
		t.Errorf("addresses after GC keeping a: %v", got)
	}
}
