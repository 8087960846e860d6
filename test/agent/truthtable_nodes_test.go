package agent_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/kubetest"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
)

// NetworkPolicy truth tables across two nodes, each with its agent, in
// both routing modes: pods a and c of every namespace on the first node,
// pods b on the second, so every case has traffic within a node and
// between nodes, decided on the receiving node by the sending pod's
// identity as its agent learnt it from the API, and on the sending node
// by the destination's.
func TestNetworkPolicyTruthTableTwoNodes(t *testing.T) {
	for _, mode := range []string{loader.RoutingVXLAN, loader.RoutingDirect} {
		t.Run(mode, func(t *testing.T) { testTruthTableTwoNodes(t, mode) })
	}
}

func testTruthTableTwoNodes(t *testing.T, mode string) {
	requireRoot(t)
	dir := t.TempDir()
	bin, err := sim.BuildPodpath(filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	cniDir, err := sim.BuildCNI(filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := sim.NewUnderlay("truthtable", netip.MustParsePrefix("192.168.232.0/24"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	var nodes []*sim.Node
	for i := range 2 {
		n, err := sim.NewNode(fmt.Sprintf("tt%d", i+1), netip.MustParsePrefix(fmt.Sprintf("10.232.%d.0/24", i+1)),
			sim.WithUnderlay(u, u.Addr(i+1)), sim.WithCNIBin(cniDir),
			sim.WithLoaderConfig(func(c *loader.Config) { c.Routing = mode }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nodes = append(nodes, n)
	}
	cluster := kubetest.Start(t, nodes[0].NS, nodes[0].Address, kubetest.Options{})
	// The second node reaches the API server over the underlay.
	b, err := os.ReadFile(cluster.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	local := fmt.Sprintf("https://127.0.0.1:%d", kubetest.APIServerPort)
	if !strings.Contains(string(b), local) {
		t.Fatalf("kubeconfig does not name %s", local)
	}
	remote := filepath.Join(dir, "kubeconfig-remote")
	b = []byte(strings.ReplaceAll(string(b), local, fmt.Sprintf("https://%s:%d", nodes[0].Address, kubetest.APIServerPort)))
	if err := os.WriteFile(remote, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		createNode(t, cluster.Client, n.Name, n.PodCIDR, n.Address)
		kc := cluster.Kubeconfig
		if i > 0 {
			kc = remote
		}
		startAgentProc(t, bin, n, kc, n.Name, filepath.Join(dir, n.Name), filepath.Join(cniDir, sim.PluginType),
			"--routing", mode, "--metrics-bind-address", "", "--healthz-bind-address", "")
	}
	deadline := time.Now().Add(60 * time.Second)
	for !peerPrefixes(t, nodes[0])[nodes[1].PodCIDR] || !peerPrefixes(t, nodes[1])[nodes[0].PodCIDR] {
		if time.Now().After(deadline) {
			t.Fatal("the nodes are not each other's peers after 60 s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	c := &ttCluster{client: cluster.Client, nodes: nodes}
	for i, name := range []string{"host-in", "host-ex"} {
		h, err := u.AddHost(name, u.Addr(100+i))
		if err != nil {
			t.Fatal(err)
		}
		c.outside = append(c.outside, &ttTarget{pod: name, ip: h.IP, do: h.Do})
	}
	c.setup(t, func(ns, pod string) (*sim.Node, string) {
		n := nodes[0]
		if pod == "b" {
			n = nodes[1]
		}
		return n, n.Name
	})
	c.run(t, c.cases())
}
