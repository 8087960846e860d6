package agent_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/podpath/podpath/internal/sim"
	pmaps "github.com/podpath/podpath/maps"
)

// Truth tables of NetworkPolicy, as the Kubernetes e2e suite
// (test/e2e/network/netpol) has them: namespaces x, y and z (labelled
// ns=<name>; the API server adds kubernetes.io/metadata.name) each hold
// pods a, b and c (labelled pod=<name>), every pod serving TCP and UDP on
// ports 80 and 81 (container ports named serve-80-tcp, serve-81-tcp,
// serve-80-udp, serve-81-udp). For each step of each case every pod probes
// every pod on each protocol and port, and the 9x9 table of what connected
// is compared with the one the policies' semantics give, written down per
// step as a function of (from, to, port).
//
// A pod reaching its own address never leaves its network namespace (the
// kernel routes it over lo), so no policy sees it: the diagonal is always
// allowed. (The e2e suite ignores the diagonal; here it is probed as well.)

const (
	// ttProbeTimeout bounds one probe: a denied one takes all of it.
	ttProbeTimeout = time.Second
	// ttParallel probes run at once.
	ttParallel = 96
	// ttDeadline is how long a step's table may take to come true: the
	// agent programs policy asynchronously.
	ttDeadline = 20 * time.Second
)

// ttPort is a protocol and port every pod serves.
type ttPort struct {
	proto corev1.Protocol
	port  uint16
}

func (p ttPort) String() string { return fmt.Sprintf("%s/%d", p.proto, p.port) }

// name is the container port's name.
func (p ttPort) name() string {
	return fmt.Sprintf("serve-%d-%s", p.port, strings.ToLower(string(p.proto)))
}

var (
	ttTCP80 = ttPort{corev1.ProtocolTCP, 80}
	ttTCP81 = ttPort{corev1.ProtocolTCP, 81}
	ttUDP80 = ttPort{corev1.ProtocolUDP, 80}
	ttUDP81 = ttPort{corev1.ProtocolUDP, 81}
	ttPorts = []ttPort{ttTCP80, ttTCP81, ttUDP80, ttUDP81}
)

// ttTarget is one end of a probe: a pod of the model, or a host outside
// the cluster (no namespace).
type ttTarget struct {
	ns, pod string // namespace and pod label ("a", "b", "c"), or "" and the host's name
	ip      netip.Addr
	do      func(func() error) error
	// kname is the Pod object's name: a simulated node needs its pods'
	// names unique, so x's pod a is "x-a"; policies select it by labels.
	kname string
}

func (g *ttTarget) String() string {
	if g.ns == "" {
		return g.pod
	}
	return g.ns + "/" + g.pod
}

func (g *ttTarget) is(ns, pod string) bool { return g.ns == ns && g.pod == pod }

// ttModel says whether the policies let from reach to on port.
type ttModel func(from, to *ttTarget, p ttPort) bool

func ttAllowAll(*ttTarget, *ttTarget, ttPort) bool { return true }

// ttCluster is the model's pods on one or more nodes, each node with its
// agent, and two hosts outside the cluster.
type ttCluster struct {
	client kubernetes.Interface
	nodes  []*sim.Node
	pods   []*ttTarget // x/a, x/b, x/c, y/a, ... z/c
	// outside are two hosts outside the cluster: the ipBlock case allows
	// the first and excepts the second.
	outside []*ttTarget
}

var (
	ttNamespaces = []string{"x", "y", "z"}
	ttPodNames   = []string{"a", "b", "c"}
)

func ttNamespaceLabels(ns string) map[string]string {
	return map[string]string{"ns": ns, "kubernetes.io/metadata.name": ns}
}

func ttPodLabels(pod string) map[string]string { return map[string]string{"pod": pod} }

// setup creates the namespaces and pods, placing each pod on the node
// place names (the sim node and its Node object's name), starts every
// target's servers and waits until every node has every pod's identity.
func (c *ttCluster) setup(t *testing.T, place func(ns, pod string) (*sim.Node, string)) {
	t.Helper()
	ctx := context.Background()
	for _, ns := range ttNamespaces {
		if _, err := c.client.CoreV1().Namespaces().Create(ctx,
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"ns": ns}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// What kube-controller-manager would create, for pods to be admitted.
		if _, err := c.client.CoreV1().ServiceAccounts(ns).Create(ctx,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var ports []corev1.ContainerPort
	for _, p := range ttPorts {
		ports = append(ports, corev1.ContainerPort{Name: p.name(), ContainerPort: int32(p.port), Protocol: p.proto})
	}
	for _, ns := range ttNamespaces {
		for _, name := range ttPodNames {
			node, nodeName := place(ns, name)
			kname := ns + "-" + name
			p := kubePodOn(t, c.client, node, nodeName, ns, kname, ttPodLabels(name), ports...)
			c.pods = append(c.pods, &ttTarget{ns: ns, pod: name, ip: p.IP, do: p.Do, kname: kname})
		}
	}
	for _, g := range append(slices.Clone(c.pods), c.outside...) {
		ttServe(t, g)
	}
	eventually(t, "every node knows every pod's identity", func() (bool, string) {
		for _, n := range c.nodes {
			ids := ttIdentities(t, n)
			for _, g := range c.pods {
				if ids[netip.PrefixFrom(g.ip, 32)] < pmaps.IdentityFirstUser {
					return false, fmt.Sprintf("%s: no identity for %s (%s): %v", n.Name, g, g.ip, ids)
				}
			}
		}
		return true, ""
	})
}

// kubePodOn starts a pod on node (its Node object nodeName) as kubelet
// does: the Pod object exists (no address yet), the runtime's CNI ADD
// connects it (on an agent's node it returns once the agent wrote the
// pod's policy), then its status gets the address.
func kubePodOn(t *testing.T, client kubernetes.Interface, node *sim.Node, nodeName, ns, name string, lbls map[string]string, ports ...corev1.ContainerPort) *sim.Pod {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "pause", Ports: ports}}},
	}
	pod, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := node.AddPod(ctx, name, sim.WithNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = p.IP.String()
	pod.Status.PodIPs = []corev1.PodIP{{IP: p.IP.String()}}
	if _, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// ttServe runs g's servers for the rest of the test: TCP on 80 and 81
// answering with g's name, UDP on 80 and 81 echoing.
func ttServe(t *testing.T, g *ttTarget) {
	t.Helper()
	for _, p := range ttPorts {
		addr := netip.AddrPortFrom(g.ip, p.port).String()
		var c interface{ Close() error }
		var err error
		if p.proto == corev1.ProtocolTCP {
			name := g.String()
			c, err = sim.ServeTCP(g.do, addr, func(net.Conn) string { return name })
		} else {
			c, _, err = sim.ServeUDPEcho(g.do, addr)
		}
		if err != nil {
			t.Fatalf("%s: serve %s: %v", g, p, err)
		}
		t.Cleanup(func() { c.Close() })
	}
}

// ttProbe says whether from reaches to on p: a TCP connection answered with
// to's name, or a datagram echoed back.
func ttProbe(from, to *ttTarget, p ttPort) bool {
	addr := netip.AddrPortFrom(to.ip, p.port).String()
	if p.proto == corev1.ProtocolTCP {
		got, err := sim.FetchTCP(from.do, addr, ttProbeTimeout)
		return err == nil && got == to.String()
	}
	msg := []byte(from.String() + " -> " + to.String())
	got, err := sim.ExchangeUDP(from.do, addr, msg, ttProbeTimeout)
	return err == nil && string(got) == string(msg)
}

// ttTable is a truth table per port: rows are the pods probing (from),
// columns what they probe (to).
type ttTable struct {
	froms, tos []*ttTarget
	v          [][][]bool // [port][from][to]
}

func newTTTable(froms, tos []*ttTarget) ttTable {
	tt := ttTable{froms: froms, tos: tos, v: make([][][]bool, len(ttPorts))}
	for i := range ttPorts {
		tt.v[i] = make([][]bool, len(froms))
		for f := range froms {
			tt.v[i][f] = make([]bool, len(tos))
		}
	}
	return tt
}

// expect is the table m gives, the diagonal allowed.
func (c *ttCluster) expect(m ttModel, tos []*ttTarget) ttTable {
	tt := newTTTable(c.pods, tos)
	for i, p := range ttPorts {
		for f, from := range tt.froms {
			for o, to := range tt.tos {
				tt.v[i][f][o] = from == to || m(from, to, p)
			}
		}
	}
	return tt
}

// observe probes every pair on every port, ttParallel at a time.
func (c *ttCluster) observe(tos []*ttTarget) ttTable {
	tt := newTTTable(c.pods, tos)
	sem := make(chan struct{}, ttParallel)
	var wg sync.WaitGroup
	for f, from := range tt.froms {
		for o, to := range tt.tos {
			for i, p := range ttPorts {
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer wg.Done()
					tt.v[i][f][o] = ttProbe(from, to, p)
					<-sem
				}()
			}
		}
	}
	wg.Wait()
	return tt
}

func (tt ttTable) equal(o ttTable) bool {
	if len(tt.tos) != len(o.tos) {
		return false
	}
	for i := range tt.v {
		for f := range tt.v[i] {
			if !slices.Equal(tt.v[i][f], o.v[i][f]) {
				return false
			}
		}
	}
	return true
}

// ttRender prints, for each port where got differs from want, both tables
// as the e2e suite does ('.' connected, 'X' not; rows from, columns to),
// the observed one with '*' after each cell that differs, and then the
// differing pairs.
func ttRender(want, got ttTable) string {
	w := 4
	for _, g := range want.tos {
		w = max(w, len(g.String())+1)
	}
	table := func(tt ttTable, i int, mark bool) string {
		var b strings.Builder
		fmt.Fprintf(&b, "%-*s", w, "-")
		for _, to := range tt.tos {
			fmt.Fprintf(&b, "%-*s", w, to)
		}
		b.WriteString("\n")
		for f, from := range tt.froms {
			fmt.Fprintf(&b, "%-*s", w, from)
			for o := range tt.tos {
				cell := "X"
				if tt.v[i][f][o] {
					cell = "."
				}
				if mark && tt.v[i][f][o] != want.v[i][f][o] {
					cell += "*"
				}
				fmt.Fprintf(&b, "%-*s", w, cell)
			}
			b.WriteString("\n")
		}
		return b.String()
	}
	var b strings.Builder
	var diffs []string
	for i, p := range ttPorts {
		var n int
		for f := range want.froms {
			for o := range want.tos {
				if want.v[i][f][o] != got.v[i][f][o] {
					n++
					verdict := map[bool]string{true: "connected", false: "blocked"}
					diffs = append(diffs, fmt.Sprintf("%s -> %s %s: %s, expected %s",
						want.froms[f], want.tos[o], p, verdict[got.v[i][f][o]], verdict[want.v[i][f][o]]))
				}
			}
		}
		if n == 0 {
			fmt.Fprintf(&b, "%s: as expected\n", p)
			continue
		}
		fmt.Fprintf(&b, "%s: %d differences\nexpected:\n%sobserved:\n%s", p, n, table(want, i, false), table(got, i, true))
	}
	b.WriteString(strings.Join(diffs, "\n"))
	return b.String()
}

// check probes the table until it is want, or fails after ttDeadline
// showing the last one observed.
func (c *ttCluster) check(t *testing.T, what string, want ttTable) {
	t.Helper()
	start := time.Now()
	var got ttTable
	for rounds := 1; ; rounds++ {
		got = c.observe(want.tos)
		if got.equal(want) {
			t.Logf("%s: the table as expected after %v (%d rounds)", what, time.Since(start).Round(time.Millisecond), rounds)
			return
		}
		if time.Since(start) > ttDeadline {
			t.Errorf("%s: the table still differs after %v (%d rounds):\n%s", what, time.Since(start).Round(time.Millisecond), rounds, ttRender(want, got))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ttIdentities reads the identities of pods' addresses node has pinned.
func ttIdentities(t *testing.T, n *sim.Node) map[netip.Prefix]uint32 {
	t.Helper()
	pol, err := pmaps.OpenPolicy(n.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer pol.Close()
	ids, err := pol.Identities()
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// mapsState is every node's policy state as the pinned maps hold it: the
// policy keys, the endpoints' enforcement and the pods' identities; clean
// says no policy key is left and no pod enforces anything.
func (c *ttCluster) mapsState(t *testing.T) (state string, clean bool) {
	t.Helper()
	var b strings.Builder
	clean = true
	for _, n := range c.nodes {
		pol, err := pmaps.OpenPolicy(n.PinRoot)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := pol.Keys()
		if err != nil {
			t.Fatal(err)
		}
		flags, err := pol.Enforcement()
		if err != nil {
			t.Fatal(err)
		}
		ids, err := pol.Identities()
		if err != nil {
			t.Fatal(err)
		}
		pol.Close()
		var ks []string
		for k := range keys {
			ks = append(ks, fmt.Sprintf("%+v", k))
		}
		slices.Sort(ks)
		fmt.Fprintf(&b, "node %s\n keys %q\n", n.Name, ks)
		for _, a := range slices.SortedFunc(maps.Keys(flags), netip.Addr.Compare) {
			fmt.Fprintf(&b, " endpoint %s flags %d\n", a, flags[a])
			if flags[a]&(pmaps.EndpointPolicyIngress|pmaps.EndpointPolicyEgress|pmaps.EndpointPolicyPending) != 0 {
				clean = false
			}
		}
		for _, p := range slices.SortedFunc(maps.Keys(ids), netip.Prefix.Compare) {
			fmt.Fprintf(&b, " identity %s %d\n", p, ids[p])
		}
		if len(keys) > 0 {
			clean = false
		}
	}
	return b.String(), clean
}

// reset deletes every NetworkPolicy, gives pods and namespaces their
// labels back, and waits until no node enforces anything.
func (c *ttCluster) reset(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, ns := range ttNamespaces {
		if err := c.client.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		n, err := c.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(n.Labels, ttNamespaceLabels(ns)) {
			c.labelNamespace(t, ns, ttNamespaceLabels(ns))
		}
	}
	for _, g := range c.pods {
		p, err := c.client.CoreV1().Pods(g.ns).Get(ctx, g.kname, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(p.Labels, ttPodLabels(g.pod)) {
			c.labelPod(t, g, ttPodLabels(g.pod))
		}
	}
	eventually(t, "no policy left in the maps", func() (bool, string) {
		s, clean := c.mapsState(t)
		return clean, s
	})
}

func (c *ttCluster) pod(ns, name string) *ttTarget {
	for _, g := range c.pods {
		if g.is(ns, name) {
			return g
		}
	}
	panic("no pod " + ns + "/" + name)
}

func (c *ttCluster) create(t *testing.T, np *networkingv1.NetworkPolicy) {
	t.Helper()
	if _, err := c.client.NetworkingV1().NetworkPolicies(np.Namespace).Create(context.Background(), np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// update replaces the spec of the existing policy of np's name.
func (c *ttCluster) update(t *testing.T, np *networkingv1.NetworkPolicy) {
	t.Helper()
	ctx := context.Background()
	cur, err := c.client.NetworkingV1().NetworkPolicies(np.Namespace).Get(ctx, np.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec = np.Spec
	if _, err := c.client.NetworkingV1().NetworkPolicies(np.Namespace).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (c *ttCluster) deletePolicy(t *testing.T, ns, name string) {
	t.Helper()
	if err := c.client.NetworkingV1().NetworkPolicies(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// labelPod makes g's Pod's labels lbls.
func (c *ttCluster) labelPod(t *testing.T, g *ttTarget, lbls map[string]string) {
	t.Helper()
	ctx := context.Background()
	p, err := c.client.CoreV1().Pods(g.ns).Get(ctx, g.kname, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels = lbls
	if _, err := c.client.CoreV1().Pods(g.ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// labelNamespace makes the namespace's labels lbls (the API server keeps
// kubernetes.io/metadata.name).
func (c *ttCluster) labelNamespace(t *testing.T, ns string, lbls map[string]string) {
	t.Helper()
	ctx := context.Background()
	n, err := c.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Labels = lbls
	if _, err := c.client.CoreV1().Namespaces().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ttStep is one change through the API and the connectivity it leads to.
type ttStep struct {
	what   string
	change func(t *testing.T) // nil: none
	allow  ttModel
	// outside: the hosts outside the cluster are probed too.
	outside bool
	// noMapChange: the change leaves the maps as they were (a policy
	// selecting no pod yet), so there is nothing to wait for.
	noMapChange bool
}

type ttCase struct {
	name  string
	steps []ttStep
}

// run runs each case as a subtest from a clean state: step by step, the
// change made, the table must come true. A step expecting the same table
// as the one before first waits for the maps to change, so that it does
// not pass on the state the previous step left.
func (c *ttCluster) run(t *testing.T, cases []ttCase) {
	for _, cs := range cases {
		t.Run(cs.name, func(t *testing.T) {
			prev := c.expect(ttAllowAll, c.pods)
			for _, st := range cs.steps {
				tos := c.pods
				if st.outside {
					tos = append(slices.Clone(c.pods), c.outside...)
				}
				want := c.expect(st.allow, tos)
				before, _ := c.mapsState(t)
				if st.change != nil {
					st.change(t)
				}
				if want.equal(prev) && st.change != nil && !st.noMapChange {
					eventually(t, st.what+": the maps changed", func() (bool, string) {
						s, _ := c.mapsState(t)
						return s != before, s
					})
				}
				c.check(t, st.what, want)
				prev = want
			}
		})
		c.reset(t)
	}
}

// Policy helpers.

func ttSel(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func ttNSPeer(sel *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: sel}
}

func ttPodPeer(sel *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: sel}
}

func ttBlockPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func ttNumPort(proto corev1.Protocol, port int32) networkingv1.NetworkPolicyPort {
	p := intstr.FromInt32(port)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

func ttRangePort(proto corev1.Protocol, port, end int32) networkingv1.NetworkPolicyPort {
	p := ttNumPort(proto, port)
	p.EndPort = &end
	return p
}

// ttNamedPort is a named port; proto "" leaves the protocol out (TCP).
func ttNamedPort(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	p := intstr.FromString(name)
	out := networkingv1.NetworkPolicyPort{Port: &p}
	if proto != "" {
		out.Protocol = &proto
	}
	return out
}

func ttIngressRule(ports []networkingv1.NetworkPolicyPort, from ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: from, Ports: ports}
}

func ttEgressRule(ports []networkingv1.NetworkPolicyPort, to ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: to, Ports: ports}
}

func ttPortList(p ...networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyPort { return p }

// ttPolicy is a NetworkPolicy in ns selecting podSel; types nil leaves
// policyTypes for the API server to infer.
func ttPolicy(ns, name string, podSel *metav1.LabelSelector, types []networkingv1.PolicyType,
	ingress []networkingv1.NetworkPolicyIngressRule, egress []networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: *podSel, PolicyTypes: types, Ingress: ingress, Egress: egress},
	}
}

var (
	ttTypesIngress = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	ttTypesEgress  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	ttTypesBoth    = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	ttEveryPod     = &metav1.LabelSelector{}
	ttPodA         = ttSel("pod", "a")
)

func ttIngresses(r ...networkingv1.NetworkPolicyIngressRule) []networkingv1.NetworkPolicyIngressRule {
	return r
}

func ttEgresses(r ...networkingv1.NetworkPolicyEgressRule) []networkingv1.NetworkPolicyEgressRule {
	return r
}

// ttCommonPrefix is the longest IPv4 prefix holding every address.
func ttCommonPrefix(addrs ...netip.Addr) netip.Prefix {
	for bits := 32; bits >= 0; bits-- {
		p := netip.PrefixFrom(addrs[0], bits).Masked()
		if !slices.ContainsFunc(addrs, func(a netip.Addr) bool { return !p.Contains(a) }) {
			return p
		}
	}
	return netip.Prefix{}
}

// cases are the e2e suite's, by its test names where it has them.
func (c *ttCluster) cases() []ttCase {
	xa, xc, yb := c.pod("x", "a"), c.pod("x", "c"), c.pod("y", "b")
	create := func(np *networkingv1.NetworkPolicy) func(*testing.T) {
		return func(t *testing.T) { c.create(t, np) }
	}
	update := func(np *networkingv1.NetworkPolicy) func(*testing.T) {
		return func(t *testing.T) { c.update(t, np) }
	}
	// Ingress into x/a from whoever allowed(from, port) says; the rest
	// open.
	intoXA := func(allowed func(from *ttTarget, p ttPort) bool) ttModel {
		return func(from, to *ttTarget, p ttPort) bool { return to != xa || allowed(from, p) }
	}
	// Egress out of x/a to whatever allowed(to, port) says; the rest open.
	outOfXA := func(allowed func(to *ttTarget, p ttPort) bool) ttModel {
		return func(from, to *ttTarget, p ttPort) bool { return from != xa || allowed(to, p) }
	}
	fromNS := func(nss ...string) func(*ttTarget, ttPort) bool {
		return func(from *ttTarget, _ ttPort) bool { return slices.Contains(nss, from.ns) }
	}
	onPorts := func(ps ...ttPort) func(*ttTarget, ttPort) bool {
		return func(_ *ttTarget, p ttPort) bool { return slices.Contains(ps, p) }
	}
	nsNotIn := func(nss ...string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: nss}}}
	}

	// The ipBlock case: a block holding every pod and both outside
	// hosts, except y/b and the second outside host. A block selects
	// pods' addresses as any other (the e2e suite's CIDR cases use the
	// server pod's).
	var all []netip.Addr
	for _, g := range append(slices.Clone(c.pods), c.outside...) {
		all = append(all, g.ip)
	}
	block := ttCommonPrefix(all...).String()
	host32 := func(g *ttTarget) string { return netip.PrefixFrom(g.ip, 32).String() }
	ex := c.outside[1]

	fromY := ttPolicy("x", "allow-from-y", ttPodA, ttTypesIngress, ttIngresses(ttIngressRule(nil, ttNSPeer(ttSel("ns", "y")))), nil)
	fromZ := ttPolicy("x", "allow-from-z", ttPodA, ttTypesIngress, ttIngresses(ttIngressRule(nil, ttNSPeer(ttSel("ns", "z")))), nil)
	// The e2e suite's update case: a policy without policyTypes, ingress
	// inferred, its peer changed in place.
	updated := func(ns string) *networkingv1.NetworkPolicy {
		return ttPolicy("x", "allow-from-ns", ttPodA, nil, ttIngresses(ttIngressRule(nil, ttNSPeer(ttSel("ns", ns)))), nil)
	}
	onePort := func(p ...networkingv1.NetworkPolicyPort) *networkingv1.NetworkPolicy {
		return ttPolicy("x", "ports", ttPodA, ttTypesIngress, ttIngresses(ttIngressRule(p)), nil)
	}

	return []ttCase{
		{name: "no policy: every pod reaches every pod", steps: []ttStep{
			{what: "no policy", allow: ttAllowAll},
		}},
		{name: "should support a 'default-deny-ingress' policy", steps: []ttStep{{
			what:   "x denies all ingress",
			change: create(ttPolicy("x", "deny-ingress", ttEveryPod, ttTypesIngress, nil, nil)),
			allow:  func(from, to *ttTarget, p ttPort) bool { return to.ns != "x" },
		}}},
		{name: "should deny egress from all pods in a namespace", steps: []ttStep{{
			what:   "x denies all egress",
			change: create(ttPolicy("x", "deny-egress", ttEveryPod, ttTypesEgress, nil, nil)),
			allow:  func(from, to *ttTarget, p ttPort) bool { return from.ns != "x" },
		}}},
		{name: "should support a 'default-deny-all' policy", steps: []ttStep{{
			what:   "x denies all ingress and egress",
			change: create(ttPolicy("x", "deny-all", ttEveryPod, ttTypesBoth, nil, nil)),
			allow:  func(from, to *ttTarget, p ttPort) bool { return from.ns != "x" && to.ns != "x" },
		}}},
		{name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector", steps: []ttStep{{
			what:   "x/a allows ingress from namespace y",
			change: create(fromY),
			allow:  intoXA(fromNS("y")),
		}}},
		{name: "should enforce policy based on PodSelector and NamespaceSelector", steps: []ttStep{{
			what: "x/a allows ingress from pods b of every namespace",
			change: create(ttPolicy("x", "allow-b-anywhere", ttPodA, ttTypesIngress, ttIngresses(ttIngressRule(nil,
				networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: ttSel("pod", "b")})), nil)),
			allow: intoXA(func(from *ttTarget, _ ttPort) bool { return from.pod == "b" }),
		}}},
		{name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector", steps: []ttStep{{
			what:   "x/a allows ingress from pod b of its namespace",
			change: create(ttPolicy("x", "allow-x-b", ttPodA, ttTypesIngress, ttIngresses(ttIngressRule(nil, ttPodPeer(ttSel("pod", "b")))), nil)),
			allow:  intoXA(func(from *ttTarget, _ ttPort) bool { return from.is("x", "b") }),
		}}},
		{name: "should enforce policy based on PodSelector or NamespaceSelector", steps: []ttStep{{
			what: "x/a allows ingress from namespaces not x (matchExpressions NotIn), or from pod b of x",
			change: create(ttPolicy("x", "allow-not-x-or-b", ttPodA, ttTypesIngress, ttIngresses(ttIngressRule(nil,
				ttNSPeer(nsNotIn("x")), ttPodPeer(ttSel("pod", "b")))), nil)),
			allow: intoXA(func(from *ttTarget, _ ttPort) bool { return from.ns != "x" || from.is("x", "b") }),
		}}},
		{name: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors", steps: []ttStep{{
			what: "x/a allows ingress from pods b and c of namespaces not x",
			change: create(ttPolicy("x", "allow-not-x-b-c", ttPodA, ttTypesIngress, ttIngresses(ttIngressRule(nil,
				networkingv1.NetworkPolicyPeer{NamespaceSelector: nsNotIn("x"), PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "pod", Operator: metav1.LabelSelectorOpIn, Values: []string{"b", "c"}}}}})), nil)),
			allow: intoXA(func(from *ttTarget, _ ttPort) bool { return from.ns != "x" && from.pod != "a" }),
		}}},
		{name: "should enforce except clause while egress access to server in CIDR block", steps: []ttStep{
			{
				what: fmt.Sprintf("x/a allows egress to %s except y/b and %s", block, ex),
				change: create(ttPolicy("x", "allow-block", ttPodA, ttTypesEgress, nil, ttEgresses(ttEgressRule(nil,
					ttBlockPeer(block, host32(yb), host32(ex)))))),
				outside: true,
				allow:   outOfXA(func(to *ttTarget, _ ttPort) bool { return to != yb && to != ex }),
			},
			{
				// "should ensure an IP overlapping both IPBlock.CIDR and
				// IPBlock.Except is allowed"
				what: "another policy allows x/a egress to y/b's and " + ex.String() + "'s /32",
				change: create(ttPolicy("x", "allow-excepted", ttPodA, ttTypesEgress, nil, ttEgresses(ttEgressRule(nil,
					ttBlockPeer(host32(yb)), ttBlockPeer(host32(ex)))))),
				outside: true,
				allow:   ttAllowAll,
			},
		}},
		{name: "should allow ingress access on one named port", steps: []ttStep{
			{
				what:   "x/a allows ingress on serve-80-tcp",
				change: create(onePort(ttNamedPort("", ttTCP80.name()))),
				allow:  intoXA(onPorts(ttTCP80)),
			},
			{
				what:   "updated: x/a allows ingress on UDP serve-81-udp",
				change: update(onePort(ttNamedPort(corev1.ProtocolUDP, ttUDP81.name()))),
				allow:  intoXA(onPorts(ttUDP81)),
			},
		}},
		{name: "should allow egress access on one named port", steps: []ttStep{
			{
				what:   "x allows egress to anyone on serve-80-tcp (each destination's port)",
				change: create(ttPolicy("x", "egress-80", ttEveryPod, ttTypesEgress, nil, ttEgresses(ttEgressRule(ttPortList(ttNamedPort("", ttTCP80.name())))))),
				allow:  func(from, to *ttTarget, p ttPort) bool { return from.ns != "x" || p == ttTCP80 },
			},
			{
				what: "updated: x allows egress to namespace y on serve-80-tcp",
				change: update(ttPolicy("x", "egress-80", ttEveryPod, ttTypesEgress, nil, ttEgresses(ttEgressRule(ttPortList(ttNamedPort("", ttTCP80.name())),
					ttNSPeer(ttSel("ns", "y")))))),
				allow: func(from, to *ttTarget, p ttPort) bool { return from.ns != "x" || to.ns == "y" && p == ttTCP80 },
			},
		}},
		{name: "should enforce policy based on Ports, with endPort", steps: []ttStep{
			{
				what:   "x/a allows ingress on TCP 80-81",
				change: create(onePort(ttRangePort(corev1.ProtocolTCP, 80, 81))),
				allow:  intoXA(onPorts(ttTCP80, ttTCP81)),
			},
			{
				what:   "updated: x/a allows ingress on TCP 80",
				change: update(onePort(ttNumPort(corev1.ProtocolTCP, 80))),
				allow:  intoXA(onPorts(ttTCP80)),
			},
			{
				what:   "updated: x/a allows ingress on TCP 81-82",
				change: update(onePort(ttRangePort(corev1.ProtocolTCP, 81, 82))),
				allow:  intoXA(onPorts(ttTCP81)),
			},
		}},
		{name: "should not allow access by TCP when a policy specifies only UDP", steps: []ttStep{
			{
				what:   "x/a allows ingress on UDP 80",
				change: create(onePort(ttNumPort(corev1.ProtocolUDP, 80))),
				allow:  intoXA(onPorts(ttUDP80)),
			},
			{
				// "should enforce ingress policy allowing any port traffic
				// to a server on a specific protocol"
				what:   "updated: x/a allows ingress on TCP, any port",
				change: update(onePort(networkingv1.NetworkPolicyPort{Protocol: &ttTCP80.proto})),
				allow:  intoXA(onPorts(ttTCP80, ttTCP81)),
			},
		}},
		{name: "should enforce multiple, stacked policies", steps: []ttStep{
			{what: "x/a allows ingress from y", change: create(fromY), allow: intoXA(fromNS("y"))},
			{what: "and another policy from z", change: create(fromZ), allow: intoXA(fromNS("y", "z"))},
			{what: "the one from y deleted", change: func(t *testing.T) { c.deletePolicy(t, "x", fromY.Name) }, allow: intoXA(fromNS("z"))},
		}},
		{name: "should enforce updated policy", steps: []ttStep{
			{what: "x/a allows ingress from y (policyTypes inferred)", change: create(updated("y")), allow: intoXA(fromNS("y"))},
			{what: "the same policy updated: from z", change: update(updated("z")), allow: intoXA(fromNS("z"))},
		}},
		{name: "should allow ingress access from updated pod", steps: []ttStep{
			{
				what:   "x/a allows ingress from pod b of x",
				change: create(ttPolicy("x", "allow-x-b", ttPodA, ttTypesIngress, ttIngresses(ttIngressRule(nil, ttPodPeer(ttSel("pod", "b")))), nil)),
				allow:  intoXA(func(from *ttTarget, _ ttPort) bool { return from.is("x", "b") }),
			},
			{
				what:   "x/c relabelled pod=b",
				change: func(t *testing.T) { c.labelPod(t, xc, ttPodLabels("b")) },
				allow:  intoXA(func(from *ttTarget, _ ttPort) bool { return from.is("x", "b") || from == xc }),
			},
			{
				what:   "x/c relabelled pod=c again",
				change: func(t *testing.T) { c.labelPod(t, xc, ttPodLabels("c")) },
				allow:  intoXA(func(from *ttTarget, _ ttPort) bool { return from.is("x", "b") }),
			},
		}},
		{name: "should deny ingress access to updated pod", steps: []ttStep{
			{
				what:        "x denies ingress to pods labelled target=isolated (none yet)",
				change:      create(ttPolicy("x", "deny-isolated", ttSel("target", "isolated"), ttTypesIngress, nil, nil)),
				allow:       ttAllowAll,
				noMapChange: true,
			},
			{
				what:   "x/a labelled target=isolated",
				change: func(t *testing.T) { c.labelPod(t, xa, map[string]string{"pod": "a", "target": "isolated"}) },
				allow:  intoXA(func(*ttTarget, ttPort) bool { return false }),
			},
			{
				what:   "the label removed",
				change: func(t *testing.T) { c.labelPod(t, xa, ttPodLabels("a")) },
				allow:  ttAllowAll,
			},
		}},
		{name: "should allow ingress access from updated namespace", steps: []ttStep{
			{
				what:   "x/a allows ingress from namespaces labelled team=t (none yet)",
				change: create(ttPolicy("x", "allow-team", ttPodA, ttTypesIngress, ttIngresses(ttIngressRule(nil, ttNSPeer(ttSel("team", "t")))), nil)),
				allow:  intoXA(func(*ttTarget, ttPort) bool { return false }),
			},
			{
				what: "y labelled team=t",
				change: func(t *testing.T) {
					l := ttNamespaceLabels("y")
					l["team"] = "t"
					c.labelNamespace(t, "y", l)
				},
				allow: intoXA(fromNS("y")),
			},
			{
				what:   "the label removed",
				change: func(t *testing.T) { c.labelNamespace(t, "y", ttNamespaceLabels("y")) },
				allow:  intoXA(func(*ttTarget, ttPort) bool { return false }),
			},
		}},
		{name: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector", steps: []ttStep{{
			what: "x/a allows egress to pod a of namespace y",
			change: create(ttPolicy("x", "egress-y-a", ttPodA, ttTypesEgress, nil, ttEgresses(ttEgressRule(nil,
				networkingv1.NetworkPolicyPeer{NamespaceSelector: ttSel("ns", "y"), PodSelector: ttSel("pod", "a")})))),
			allow: outOfXA(func(to *ttTarget, _ ttPort) bool { return to.is("y", "a") }),
		}}},
		{name: "should work with Ingress, Egress specified together", steps: []ttStep{{
			what: "x/a allows ingress from y, egress to z, on every port",
			change: create(ttPolicy("x", "in-y-out-z", ttPodA, ttTypesBoth,
				ttIngresses(ttIngressRule(nil, ttNSPeer(ttSel("ns", "y")))),
				ttEgresses(ttEgressRule(nil, ttNSPeer(ttSel("ns", "z")))))),
			allow: func(from, to *ttTarget, p ttPort) bool {
				return (to != xa || from.ns == "y") && (from != xa || to.ns == "z")
			},
		}}},
		{name: "should enforce multiple ingress policies with ingress allow-all policy taking precedence", steps: []ttStep{
			{
				what:   "x/a allows ingress on TCP 80",
				change: create(onePort(ttNumPort(corev1.ProtocolTCP, 80))),
				allow:  intoXA(onPorts(ttTCP80)),
			},
			{
				what:   "and another policy allows it all",
				change: create(ttPolicy("x", "allow-all", ttPodA, ttTypesIngress, ttIngresses(ttIngressRule(nil)), nil)),
				allow:  ttAllowAll,
			},
		}},
	}
}

// NetworkPolicy truth tables on one node: nine pods in namespaces x, y
// and z, every pair probed on TCP and UDP ports 80 and 81, case by case
// against the real API server and agent.
func TestNetworkPolicyTruthTable(t *testing.T) {
	e := newEnv(t)
	e.startAgent(t, e.bin)
	far, err := e.node.AddRemote("far", netip.MustParsePrefix("10.251.0.1/24"), netip.MustParsePrefix("10.251.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	c := &ttCluster{client: e.client, nodes: []*sim.Node{e.node}, outside: []*ttTarget{
		{pod: "host-in", ip: far.IP, do: far.Do},
		{pod: "host-ex", ip: e.node.Outside.IP, do: e.node.Outside.Do},
	}}
	c.setup(t, func(string, string) (*sim.Node, string) { return e.node, nodeName })
	c.run(t, c.cases())
}
