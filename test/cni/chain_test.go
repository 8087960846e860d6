package cni_test

import (
	"encoding/json"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
)

// Chained after a plugin that reported its own interface and address,
// podpath keeps them and appends its own, its address naming the right
// interface; a previous plugin that already made the pod's interface is
// refused.
func TestChainedAfterPrevResult(t *testing.T) {
	n := newNode(t, "chain", "10.77.16.0/24")
	pod, err := sim.NewNetNS("chain", "pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.RemoveNetNS(pod) })
	prev := map[string]any{
		"cniVersion": "1.1.0",
		"interfaces": []any{map[string]any{"name": "tap-prev"}},
		"ips":        []any{map[string]any{"address": "192.0.2.10/24", "interface": 0}},
		"dns":        map[string]any{"nameservers": []any{"192.0.2.53"}},
	}
	call := pluginCall{Command: "ADD", ContainerID: "chained", Netns: pod.Path(), IfName: "eth0",
		Stdin: pluginConf(t, n, map[string]any{"prevResult": prev})}
	out, cerr := call.run(t, n)
	if cerr != nil {
		t.Fatalf("chained ADD: %v", cerr)
	}
	var r types100.Result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Interfaces) != 3 || r.Interfaces[0].Name != "tap-prev" ||
		r.Interfaces[1].Name != cni.HostVethName("chained", "eth0") || r.Interfaces[2].Name != "eth0" {
		t.Fatalf("interfaces %s", out)
	}
	if len(r.IPs) != 2 || r.IPs[0].Address.String() != "192.0.2.10/24" || *r.IPs[1].Interface != 2 {
		t.Fatalf("ips %s", out)
	}
	if len(r.DNS.Nameservers) != 1 || r.DNS.Nameservers[0] != "192.0.2.53" {
		t.Fatalf("dns %s", out)
	}
	// CHECK with that result as prevResult, as a runtime sends it.
	var asMap map[string]any
	json.Unmarshal(out, &asMap)
	check := call
	check.Command = "CHECK"
	check.Stdin = pluginConf(t, n, map[string]any{"prevResult": asMap})
	if _, cerr := check.run(t, n); cerr != nil {
		t.Fatalf("CHECK of the chained attachment: %v", cerr)
	}
	del := call
	del.Command = "DEL"
	if _, cerr := del.run(t, n); cerr != nil {
		t.Fatalf("DEL: %v", cerr)
	}

	prev["interfaces"] = []any{map[string]any{"name": "eth0", "sandbox": pod.Path()}}
	call.Stdin = pluginConf(t, n, map[string]any{"prevResult": prev})
	if _, cerr := call.run(t, n); cerr == nil || cerr.Code != types.ErrInvalidNetworkConfig {
		t.Fatalf("ADD after a plugin that made eth0: %v, want code %d", cerr, types.ErrInvalidNetworkConfig)
	}
	assertNoPartialState(t, n, pod, 0)
}

// A runtime speaking an older spec gets its own result format.
func TestOlderSpecResult(t *testing.T) {
	n := newNode(t, "spec040", "10.77.17.0/24")
	pod, err := sim.NewNetNS("spec040", "pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.RemoveNetNS(pod) })
	call := pluginCall{Command: "ADD", ContainerID: "old-runtime", Netns: pod.Path(), IfName: "eth0",
		Stdin: pluginConf(t, n, map[string]any{"cniVersion": "0.4.0"})}
	out, cerr := call.run(t, n)
	if cerr != nil {
		t.Fatalf("ADD 0.4.0: %v", cerr)
	}
	var r types040.Result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	if r.CNIVersion != "0.4.0" || len(r.IPs) != 1 || r.IPs[0].Version != "4" || len(r.Interfaces) != 2 {
		t.Fatalf("0.4.0 result %s", out)
	}
	call.Command = "DEL"
	if _, cerr := call.run(t, n); cerr != nil {
		t.Fatalf("DEL 0.4.0: %v", cerr)
	}
	assertNoPartialState(t, n, pod, 0)
}
