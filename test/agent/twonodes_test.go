package agent_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podpath/podpath/internal/kubetest"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
)

// twoNodes is two simulated nodes on one underlay, in one routing mode,
// with a control plane on the first and an agent on each (the second
// reaching the API server over the underlay).
type twoNodes struct {
	nodes    []*sim.Node
	underlay *sim.Underlay
	cluster  *kubetest.Cluster
}

// newTwoNodes builds the nodes name1 and name2 on the underlay subnet
// 192.168.<third>.0/24 with pod CIDRs 10.<third>.1.0/24 and
// 10.<third>.2.0/24, creates their Node objects and starts their agents.
func newTwoNodes(t *testing.T, name string, third int, mode string) *twoNodes {
	t.Helper()
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
	u, err := sim.NewUnderlay(name, netip.MustParsePrefix(fmt.Sprintf("192.168.%d.0/24", third)), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	tn := &twoNodes{underlay: u}
	for i := range 2 {
		n, err := sim.NewNode(fmt.Sprintf("%s%d", name, i+1), netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", third, i+1)),
			sim.WithUnderlay(u, u.Addr(i+1)), sim.WithCNIBin(cniDir),
			sim.WithLoaderConfig(func(c *loader.Config) { c.Routing = mode }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		tn.nodes = append(tn.nodes, n)
	}
	tn.cluster = kubetest.Start(t, tn.nodes[0].NS, tn.nodes[0].Address, kubetest.Options{})
	b, err := os.ReadFile(tn.cluster.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	local := fmt.Sprintf("https://127.0.0.1:%d", kubetest.APIServerPort)
	if !strings.Contains(string(b), local) {
		t.Fatalf("kubeconfig does not name %s", local)
	}
	remote := filepath.Join(dir, "kubeconfig-remote")
	b = []byte(strings.ReplaceAll(string(b), local, fmt.Sprintf("https://%s:%d", tn.nodes[0].Address, kubetest.APIServerPort)))
	if err := os.WriteFile(remote, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for i, n := range tn.nodes {
		createNode(t, tn.cluster.Client, n.Name, n.PodCIDR, n.Address)
		kc := tn.cluster.Kubeconfig
		if i > 0 {
			kc = remote
		}
		startAgentProc(t, bin, n, kc, n.Name, filepath.Join(dir, n.Name), filepath.Join(cniDir, sim.PluginType),
			"--routing", mode, "--metrics-bind-address", "", "--healthz-bind-address", "")
	}
	return tn
}
