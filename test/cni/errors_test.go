package cni_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/vishvananda/netlink"
)

// assertNoPartialState fails when anything of an attachment exists: an
// address, an endpoint, a host veth, an attached program, or a device in the pod.
func assertNoPartialState(t *testing.T, n *sim.Node, pod ns.NetNS, wantAddrs int) {
	t.Helper()
	if a := allocations(t, n); len(a) != wantAddrs {
		t.Errorf("address files: %v, want %d", a, wantAddrs)
	}
	if eps := endpoints(t, n); len(eps) != wantAddrs {
		t.Errorf("endpoints: %v, want %d", eps, wantAddrs)
	}
	if v := hostVeths(t, n); len(v) != wantAddrs {
		t.Errorf("host veths: %v, want %d", v, wantAddrs)
	}
	if p := attachedVeths(t, n); len(p) != 2*wantAddrs {
		t.Errorf("attachments: %v, want %d (from_pod and to_pod per pod)", p, 2*wantAddrs)
	}
	if pod == nil {
		return
	}
	if err := pod.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				t.Errorf("pod netns has %s", l.Attrs().Name)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// Input no runtime should send gets the spec's error code and changes
// nothing.
func TestBadInputErrorCodes(t *testing.T) {
	n := newNode(t, "badinput", "10.77.11.0/24")
	pod, err := sim.NewNetNS("badinput", "pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.RemoveNetNS(pod) })
	good := pluginConf(t, n, nil)
	add := func(stdin []byte) pluginCall {
		return pluginCall{Command: "ADD", ContainerID: "bad-input", Netns: pod.Path(), IfName: "eth0",
			Args: "IgnoreUnknown=1;K8S_POD_NAME=bad", Stdin: stdin}
	}
	with := func(c pluginCall, f func(*pluginCall)) pluginCall { f(&c); return c }

	cases := []struct {
		name string
		call pluginCall
		code uint
		msg  string
	}{
		{"malformed-json", add([]byte(`{"cniVersion":"1.1.0","name":`)), types.ErrDecodingFailure, "unmarshal"},
		{"no-containerid", with(add(good), func(c *pluginCall) { c.Unset = []string{"CNI_CONTAINERID"} }), types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID"},
		{"no-netns", with(add(good), func(c *pluginCall) { c.Unset = []string{"CNI_NETNS"} }), types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"netns-gone", with(add(good), func(c *pluginCall) { c.Netns = "/run/netns/pp-does-not-exist" }), types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"no-ifname", with(add(good), func(c *pluginCall) { c.Unset = []string{"CNI_IFNAME"} }), types.ErrInvalidEnvironmentVariables, "CNI_IFNAME"},
		{"bad-ifname", with(add(good), func(c *pluginCall) { c.IfName = "a/b" }), types.ErrInvalidEnvironmentVariables, "interface name"},
		{"malformed-args", with(add(good), func(c *pluginCall) { c.Args = "K8S_POD_NAME" }), types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
		{"unknown-args", with(add(good), func(c *pluginCall) { c.Args = "FOO=bar" }), types.ErrInvalidEnvironmentVariables, "unknown args"},
		{"unknown-version", add(pluginConf(t, n, map[string]any{"cniVersion": "9.9.9"})), types.ErrIncompatibleCNIVersion, "incompatible"},
		{"cidr-garbage", add(pluginConf(t, n, map[string]any{"podCIDR": "banana"})), types.ErrInvalidNetworkConfig, "podCIDR"},
		{"cidr-33", add(pluginConf(t, n, map[string]any{"podCIDR": "10.77.11.0/33"})), types.ErrInvalidNetworkConfig, "podCIDR"},
		{"cidr-host-bits", add(pluginConf(t, n, map[string]any{"podCIDR": "10.77.11.7/24"})), types.ErrInvalidNetworkConfig, "host bits"},
		{"cidr-ipv6", add(pluginConf(t, n, map[string]any{"podCIDR": "fd00::/64"})), types.ErrInvalidNetworkConfig, "IPv4"},
		{"cidr-too-small", add(pluginConf(t, n, map[string]any{"podCIDR": "10.77.11.0/31"})), types.ErrInvalidNetworkConfig, "8-30"},
		{"mtu-negative", add(pluginConf(t, n, map[string]any{"mtu": -1})), types.ErrInvalidNetworkConfig, "mtu"},
		{"mtu-string", add(pluginConf(t, n, map[string]any{"mtu": "big"})), types.ErrInvalidNetworkConfig, "mtu"},
		{"pinroot-relative", add(pluginConf(t, n, map[string]any{"pinRoot": "bpf/podpath"})), types.ErrInvalidNetworkConfig, "absolute"},
		{"no-datapath", add(pluginConf(t, n, map[string]any{"pinRoot": n.PinRoot + "-missing"})), cni.CodeDatapathNotLoaded, "not loaded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, cerr := tc.call.run(t, n)
			if cerr == nil {
				t.Fatal("ADD succeeded")
			}
			t.Logf("code %d: %s %s", cerr.Code, cerr.Msg, cerr.Details)
			if cerr.Code != tc.code {
				t.Errorf("code %d, want %d (%s)", cerr.Code, tc.code, cerr.Msg)
			}
			if text := cerr.Msg + " " + cerr.Details; !strings.Contains(text, tc.msg) {
				t.Errorf("message %q does not mention %q", text, tc.msg)
			}
			assertNoPartialState(t, n, pod, 0)
		})
	}
}

// An exhausted /28 (14 addresses) fails the next ADD with CodePoolExhausted
// and a message saying so, leaves nothing of it behind, and recovers once a
// pod is deleted. STATUS stays ready throughout (as documented).
func TestPoolExhausted(t *testing.T) {
	n := newNode(t, "exhaust", "10.77.12.0/28")
	var pods []*sim.Pod
	for i := range 14 {
		pods = append(pods, addPod(t, n, fmt.Sprintf("p%02d", i)))
	}
	_, err := n.AddPod(testContext(t), "one-too-many")
	if err == nil {
		t.Fatal("ADD into an exhausted pool succeeded")
	}
	if code := cniCode(err); code != cni.CodePoolExhausted {
		t.Errorf("code %d, want %d: %v", code, cni.CodePoolExhausted, err)
	}
	if want := "address pool 10.77.12.0/28 exhausted: 14 addresses in use"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	assertNoPartialState(t, n, nil, 14)
	if err := n.Status(testContext(t)); err != nil {
		t.Errorf("STATUS with an exhausted pool: %v", err)
	}

	if err := n.DelPod(testContext(t), pods[3]); err != nil {
		t.Fatal(err)
	}
	p := addPod(t, n, "after-release")
	if p.IP != pods[3].IP {
		t.Errorf("the freed address %s was not reused: got %s", pods[3].IP, p.IP)
	}
}

// STATUS succeeds on a loaded node and fails with code 50 once its datapath
// is gone; ADD then fails with CodeDatapathNotLoaded and allocates nothing.
func TestStatus(t *testing.T) {
	n := newNode(t, "status", "10.77.13.0/24")
	ctx := context.Background()
	if err := n.Status(ctx); err != nil {
		t.Fatalf("STATUS on a loaded node: %v", err)
	}
	_, cerr := pluginCall{Command: "STATUS", Stdin: pluginConf(t, n, map[string]any{"pinRoot": n.PinRoot + "-missing"})}.run(t, n)
	if cerr == nil || cerr.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with missing pins: %v, want code %d", cerr, types.ErrPluginNotAvailable)
	}
	if !strings.Contains(cerr.Msg, "not loaded") {
		t.Errorf("STATUS message %q", cerr.Msg)
	}

	if err := n.Do(func() error { return loader.Reset(n.PinRoot, n.StateDir) }); err != nil {
		t.Fatal(err)
	}
	err := n.Status(ctx)
	if code := cniCode(err); code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS after reset: %v, want code %d", err, types.ErrPluginNotAvailable)
	}
	t.Logf("STATUS after reset: %v", err)
	_, err = n.AddPod(ctx, "a")
	if code := cniCode(err); code != cni.CodeDatapathNotLoaded {
		t.Fatalf("ADD after reset: %v, want code %d", err, cni.CodeDatapathNotLoaded)
	}
	if a := allocations(t, n); len(a) != 0 {
		t.Errorf("address files: %v", a)
	}
}
