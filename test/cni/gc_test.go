package cni_test

import (
	"os"
	"slices"
	"testing"

	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// GC releases every attachment not in cni.dev/valid-attachments (address,
// endpoint, veth, attached program), including one whose address record was lost,
// and keeps the valid ones working.
func TestGCKeepsOnlyValidAttachments(t *testing.T) {
	n := newNode(t, "gc", "10.77.10.0/24")
	a, c, d := addPod(t, n, "a"), addPod(t, n, "c"), addPod(t, n, "d")
	addPod(t, n, "b")
	// d's address record is lost: GC must find its veth by the network's label.
	if err := os.Remove(cni.AddressFile(n.StateDir, d.IP)); err != nil {
		t.Fatal(err)
	}

	gc(t, n, a, c)

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
		wantAtts = append(wantAtts, "from_pod@ingress@"+v, "to_pod@egress@"+v)
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

// A pod's host veth deleted behind the plugin's back leaves, with tcx, the
// pinned links of from_pod and to_pod behind, attached to nothing; GC
// removes both even while the attachment is still valid (its DEL will
// find nothing left to do).
func TestGCRemovesLinkPinsOfDeletedVeths(t *testing.T) {
	n := newNode(t, "gcpins", "10.77.16.0/24")
	a := addPod(t, n, "a")
	hostName := cni.HostVethName(a.ContainerID, sim.IfName)
	if err := n.Do(func() error {
		l, err := netlink.LinkByName(hostName)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}
	var left []string
	if err := n.Do(func() error {
		atts, err := loader.Attachments(n.PinRoot)
		for _, at := range atts {
			left = append(left, at.Program+"@"+string(at.Direction))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// With tcx the links outlive their device; cls_bpf filters go with it.
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{loader.ModeTCX: 2, loader.ModeLegacyTC: 0}[f.TCMechanism()]; len(left) != want {
		t.Fatalf("attachments with the veth gone: %v, want %d", left, want)
	}

	gc(t, n, a)
	if got := attachedVeths(t, n); len(got) != 0 {
		t.Errorf("attachments after GC: %v, want none", got)
	}
	entries, err := os.ReadDir(maps.LinkDir(n.PinRoot))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("link pin %s left after GC", e.Name())
	}
}

// GC closes the hostPorts of the pods it does not list, a pod whose address
// record and veth are already gone included, so new pods can have them, and
// keeps the listed pod's.
func TestGCClosesHostPortsOfUnlistedPods(t *testing.T) {
	n := newNode(t, "gchostport", "10.77.23.0/24")
	addWithPort := func(name string, port int) (*sim.Pod, error) {
		return n.AddPod(testContext(t), name, sim.WithPortMappings(sim.PortMapping{HostPort: port, ContainerPort: 80, Protocol: "tcp"}))
	}
	var pods []*sim.Pod
	for i, name := range []string{"kept", "unlisted", "bare"} {
		p, err := addWithPort(name, 8081+i)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	// bare keeps only its hostPort: its record is lost, its veth deleted.
	bare := pods[2]
	if err := os.Remove(cni.AddressFile(n.StateDir, bare.IP)); err != nil {
		t.Fatal(err)
	}
	if err := n.Do(func() error {
		l, err := netlink.LinkByName(cni.HostVethName(bare.ContainerID, sim.IfName))
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}

	gc(t, n, pods[0])
	for i, name := range []string{"after-unlisted", "after-bare"} {
		if _, err := addWithPort(name, 8082+i); err != nil {
			t.Errorf("hostPort %d after GC: %v", 8082+i, err)
		}
	}
	if _, err := addWithPort("clash", 8081); cniCode(err) != cni.CodeHostPortConflict {
		t.Errorf("hostPort 8081 of the listed pod after GC: %v, want code %d", err, cni.CodeHostPortConflict)
	}
}
