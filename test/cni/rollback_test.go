package cni_test

import (
	"fmt"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
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
