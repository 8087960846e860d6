package cni_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// An ADD that fails after the address is reserved undoes everything it did:
// here because the pod already has an eth0.
func TestAddFailureInPodLeavesNothing(t *testing.T) {
	n := newNode(t, "rollback", "10.77.14.0/24")
	pod, err := sim.NewNetNS("rollback", "pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.RemoveNetNS(pod) })
	if err := pod.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0-peer"})
	}); err != nil {
		t.Fatal(err)
	}
	_, cerr := pluginCall{Command: "ADD", ContainerID: "taken-eth0", Netns: pod.Path(), IfName: "eth0",
		Stdin: pluginConf(t, n, nil)}.run(t, n)
	if cerr == nil {
		t.Fatal("ADD into a pod that has eth0 succeeded")
	}
	t.Logf("code %d: %s", cerr.Code, cerr.Msg)
	if cerr.Code != types.ErrInvalidNetworkConfig {
		t.Errorf("code %d, want %d", cerr.Code, types.ErrInvalidNetworkConfig)
	}
	assertNoPartialState(t, n, nil, 0)
}

// An ADD that fails at the very end, when the endpoints map is full, has by
// then created the veth pair, configured the pod and added the node route:
// all of it is undone and the address is released.
func TestAddFailureAtEndpointLeavesNothing(t *testing.T) {
	const max = 16
	n := newNode(t, "mapfull", "10.77.15.0/24", sim.WithMaxEndpoints(max))
	for i := range max {
		addPod(t, n, fmt.Sprintf("p%02d", i))
	}
	_, err := n.AddPod(testContext(t), "one-too-many")
	if err == nil {
		t.Fatal("ADD into a full endpoints map succeeded")
	}
	t.Logf("ADD: %v", err)
	if code := cniCode(err); code != cni.CodeEndpointMapFull {
		t.Errorf("code %d, want %d", code, cni.CodeEndpointMapFull)
	}
	assertNoPartialState(t, n, nil, max)
	if r := nodeRoutes(t, n); len(r) != max {
		t.Errorf("%d node routes, want %d", len(r), max)
	}
}

// An ADD that fails attaching to_pod, the last program it attaches, has
// by then registered the endpoint and attached from_pod: all of it is
// undone. The failure is forced by pinning an XDP program as to_pod.
func TestAddFailureAtToPodLeavesNothing(t *testing.T) {
	n := newNode(t, "topodfail", "10.77.17.0/24")
	addPod(t, n, "ok")
	toPod := maps.ProgPath(n.PinRoot, maps.ProgToPod)
	saved := toPod + "_saved"
	if err := os.Rename(toPod, saved); err != nil {
		t.Fatal(err)
	}
	// A second pin of xdp_netdev: a program opened by id has no pin of its
	// own, so Pin adds one rather than moving the existing one.
	pinned, err := ebpf.LoadPinnedProgram(maps.ProgPath(n.PinRoot, maps.ProgXDPNetdev), nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := pinned.Info()
	pinned.Close()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	xdp, err := ebpf.NewProgramFromID(id)
	if err != nil {
		t.Fatal(err)
	}
	defer xdp.Close()
	if err := xdp.Pin(toPod); err != nil {
		t.Fatal(err)
	}

	_, err = n.AddPod(testContext(t), "fails")
	if err == nil {
		t.Fatal("ADD with an XDP program as to_pod succeeded")
	}
	t.Logf("ADD: %v", err)
	if !strings.Contains(err.Error(), "attach to_pod") {
		t.Errorf("ADD error %q does not say it was attaching to_pod", err)
	}
	assertNoPartialState(t, n, nil, 1)

	// The node's own program back, ADD works again.
	if err := os.Rename(saved, toPod); err != nil {
		t.Fatal(err)
	}
	addPod(t, n, "works")
	assertNoPartialState(t, n, nil, 2)
}
