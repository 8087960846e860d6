package main

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/kubetest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestKubeProxyRulesAsKubeProxyWrites compares the services family's
// kube-proxy contenders with the real thing: the kube-proxy of the
// Kubernetes build the tests use starts in each mode on a node of a real
// API server holding a few Services (one with an endpoint on that node,
// one with two elsewhere, and `kubernetes`), and what it writes must be
// what the generators write for the same Services: for nftables the whole
// table, as `nft list table` shows it; for iptables (the legacy backend)
// kube-proxy's chains on the path of a ClusterIP connection, as
// iptables-save shows them.
func TestKubeProxyRulesAsKubeProxyWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := startControlPlane(50)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.close(); err != nil {
			t.Error(err)
		}
	})
	if err := c.ensureNamespace(ctx); err != nil {
		t.Fatal(err)
	}
	specs := map[string]cpSpec{}
	for _, s := range cpSpecs()[1:] {
		specs[s.contender] = s
		if err := c.createNode(ctx, s.node, s.addr.Addr(), s.podCIDR); err != nil {
			t.Fatal(err)
		}
	}
	// One pod address, on the nftables node and on the iptables node
	// alike: its connections to itself through a Service are masqueraded.
	local := addrAdd(netip.MustParsePrefix(specs[cpKPNftables].podCIDR).Addr(), 7)
	svcs := []kpService{
		{namespace: cpNamespace, name: "filler-000000", portLabel: "http", clusterIP: netip.MustParseAddr("10.96.5.1"),
			port: svcPort, targetPort: svcTargetPort, endpoints: []netip.Addr{netip.MustParseAddr("10.244.9.1"), netip.MustParseAddr("10.244.9.2")}},
		{namespace: cpNamespace, name: measuredName, portLabel: "http", clusterIP: netip.MustParseAddr("10.96.111.10"),
			port: svcPort, targetPort: svcTargetPort, endpoints: []netip.Addr{local}},
	}
	for _, s := range svcs {
		if err := createKPService(ctx, c, s, specs[cpKPNftables].node, local); err != nil {
			t.Fatal(err)
		}
	}
	// The cluster's own Service, as kube-proxy sees it; the API server
	// writes it shortly after it starts.
	var (
		k8s *corev1.Service
		eps *discoveryv1.EndpointSlice
	)
	for {
		k8s, err = c.client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		if err == nil {
			eps, err = c.client.DiscoveryV1().EndpointSlices("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(k8s.Spec.Ports) != 1 || len(eps.Ports) != 1 || len(eps.Endpoints) != 1 {
		t.Fatalf("kubernetes Service %+v, slice %+v: want one port and one endpoint", k8s.Spec, eps)
	}
	svcs = append(svcs, kpService{namespace: "default", name: "kubernetes", portLabel: k8s.Spec.Ports[0].Name,
		clusterIP: netip.MustParseAddr(k8s.Spec.ClusterIP), port: int(k8s.Spec.Ports[0].Port), targetPort: int(*eps.Ports[0].Port),
		endpoints: []netip.Addr{netip.MustParseAddr(eps.Endpoints[0].Addresses[0])}})

	e := &env{cfg: config{CPMinSync: 100 * time.Millisecond}}
	// node runs kube-proxy for spec and returns what dump prints there once
	// done says it holds every Service, and what dump prints in a fresh
	// namespace after load.
	node := func(t *testing.T, spec cpSpec, dump func(ns.NetNS) (string, error), done func(string) bool, load func(ns.NetNS) error) (real, ours string) {
		n, err := startKubeProxyNode(ctx, e, c, spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.close() })
		for {
			real, err = dump(n.ns)
			if err == nil && done(real) {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("kube-proxy never programmed %d services: %v\n%s", len(svcs), err, real)
			}
			time.Sleep(100 * time.Millisecond)
		}
		fresh, rm, err := newNS("kpgen")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rm() })
		if err := load(fresh); err != nil {
			t.Fatal(err)
		}
		if ours, err = dump(fresh); err != nil {
			t.Fatal(err)
		}
		return real, ours
	}
	compare := func(t *testing.T, real, ours string, want, got map[string]string) {
		for _, k := range slices.Sorted(mapsKeys(want, got)) {
			if want[k] != got[k] {
				t.Errorf("%s\nkube-proxy wrote:\n%s\nthe generator:\n%s", k, want[k], got[k])
			}
		}
		if t.Failed() {
			t.Logf("kube-proxy's rules:\n%s\nthe generator's:\n%s", real, ours)
		}
		t.Logf("%d chains, sets and maps alike", len(want))
	}

	t.Run("nftables", func(t *testing.T) {
		spec := specs[cpKPNftables]
		gen := kubeProxyNFTRules(svcs, kpnNode{name: spec.node, address: spec.addr.Addr(),
			clusterCIDR: netip.MustParsePrefix(cpClusterCIDR), serviceCIDRs: []netip.Prefix{kubetest.ServiceCIDR}},
			func(a netip.Addr) bool { return a == local })
		real, ours := node(t, spec,
			func(n ns.NetNS) (string, error) { return runIn(ctx, n, "", "nft", "list", "table", "ip", "kube-proxy") },
			func(out string) bool { return strings.Count(out, ": goto service-") == len(svcs) },
			func(n ns.NetNS) error {
				if out, err := runIn(ctx, n, gen, "nft", "-f", "-"); err != nil {
					return fmt.Errorf("nft -f of the generated rules: %w\n%s\n%s", err, out, gen)
				}
				return nil
			})
		compare(t, real, ours, nftBlocks(real), nftBlocks(ours))
	})

	t.Run("iptables", func(t *testing.T) {
		spec := specs[cpKPIptables]
		// The local pod is on this node too: its endpoint is local here.
		if err := c.client.DiscoveryV1().EndpointSlices(cpNamespace).Delete(ctx, measuredName+"-1", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := createKPSlice(ctx, c, svcs[1], spec.node, local); err != nil {
			t.Fatal(err)
		}
		real, ours := node(t, spec,
			func(n ns.NetNS) (string, error) {
				nat, err := runIn(ctx, n, "", "iptables-legacy-save", "-t", "nat")
				if err != nil {
					return "", err
				}
				filter, err := runIn(ctx, n, "", "iptables-legacy-save", "-t", "filter")
				return nat + filter, err
			},
			func(out string) bool { return strings.Count(out, "-A KUBE-SERVICES ") == len(svcs)+1 },
			func(n ns.NetNS) error {
				if _, err := runIn(ctx, n, kubeProxyStartup(), kpRestore, "--noflush"); err != nil {
					return err
				}
				_, err := runIn(ctx, n, kubeProxyRules(svcs, netip.MustParsePrefix(cpClusterCIDR)), kpRestore, "--noflush", "--counters")
				return err
			})
		// Where the kernel has nfacct, kube-proxy counts the INVALID
		// packets KUBE-FORWARD drops; the generator leaves the counter
		// off (the benchmarks send no invalid packets).
		const nfacct = " -m nfacct --nfacct-name  ct_state_invalid_dropped_pkts"
		compare(t, real, ours, iptChains(strings.ReplaceAll(real, nfacct, "")), iptChains(ours))
	})
}

// iptChains is iptables-save output's rules by table and chain, for the
// chains on a ClusterIP connection's path: KUBE-SERVICES (its rules
// sorted: kube-proxy writes the services in map order), the service and
// endpoint chains, KUBE-MARK-MASQ, KUBE-POSTROUTING and KUBE-FORWARD.
func iptChains(out string) map[string]string {
	chains := map[string][]string{}
	table := ""
	for _, l := range strings.Split(out, "\n") {
		if t, ok := strings.CutPrefix(l, "*"); ok {
			table = t
			continue
		}
		rest, ok := strings.CutPrefix(l, "-A ")
		if !ok {
			continue
		}
		chain, _, _ := strings.Cut(rest, " ")
		switch {
		case chain == "KUBE-SERVICES", chain == "KUBE-MARK-MASQ", chain == "KUBE-POSTROUTING", chain == "KUBE-FORWARD",
			strings.HasPrefix(chain, "KUBE-SVC-"), strings.HasPrefix(chain, "KUBE-SEP-"):
			k := table + " " + chain
			chains[k] = append(chains[k], l)
		}
	}
	out2 := map[string]string{}
	for k, ls := range chains {
		if strings.HasSuffix(k, " KUBE-SERVICES") {
			slices.Sort(ls)
		}
		out2[k] = strings.Join(ls, "\n")
	}
	return out2
}

// createKPService creates s with its EndpointSlice; an endpoint equal to
// local is on node.
func createKPService(ctx context.Context, c *cpCluster, s kpService, node string, local netip.Addr) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: s.namespace},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: s.clusterIP.String(),
			Ports: []corev1.ServicePort{{Name: s.portLabel, Port: int32(s.port), TargetPort: intstr.FromInt32(int32(s.targetPort)), Protocol: corev1.ProtocolTCP}}},
	}
	if _, err := c.client.CoreV1().Services(s.namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %s: %w", s.name, err)
	}
	return createKPSlice(ctx, c, s, node, local)
}

// createKPSlice creates s's EndpointSlice; an endpoint equal to local is
// on node.
func createKPSlice(ctx context.Context, c *cpCluster, s kpService, node string, local netip.Addr) error {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: s.name + "-1", Namespace: s.namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: s.name, discoveryv1.LabelManagedBy: cpManagedBy}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr(s.portLabel), Port: ptr(int32(s.targetPort)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	for _, a := range s.endpoints {
		ep := discoveryv1.Endpoint{Addresses: []string{a.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)}}
		if a == local {
			ep.NodeName = ptr(node)
		} else {
			ep.NodeName = ptr("elsewhere-" + strconv.Itoa(int(a.As4()[3])))
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
	if _, err := c.client.DiscoveryV1().EndpointSlices(s.namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create endpointslice %s: %w", s.name, err)
	}
	return nil
}

// nftBlocks splits `nft list table` output into its chains, sets and maps
// by their first line, each block's lines trimmed, and a set's or map's
// elements one a line, sorted (nft prints them in its own order).
func nftBlocks(out string) map[string]string {
	blocks := map[string]string{}
	var name string
	var lines, elems []string
	inElems := false
	flush := func() {
		if name != "" {
			slices.Sort(elems)
			blocks[name] = strings.Join(append(lines, elems...), "\n")
		}
		name, lines, elems = "", nil, nil
	}
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || l == "}" && !inElems:
			continue
		case strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "set ") || strings.HasPrefix(l, "map ") || strings.HasPrefix(l, "table "):
			flush()
			name = strings.TrimSuffix(l, " {")
			continue
		}
		if rest, ok := strings.CutPrefix(l, "elements = {"); ok {
			inElems, l = true, rest
		}
		if inElems {
			end := strings.HasSuffix(l, "}")
			l = strings.TrimSuffix(l, "}")
			for _, e := range strings.Split(l, ",") {
				if e = strings.TrimSpace(e); e != "" {
					elems = append(elems, e)
				}
			}
			inElems = !end
			continue
		}
		lines = append(lines, l)
	}
	flush()
	return blocks
}

func mapsKeys(ms ...map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		seen := map[string]bool{}
		for _, m := range ms {
			for k := range m {
				if !seen[k] && !yield(k) {
					return
				}
				seen[k] = true
			}
		}
	}
}
