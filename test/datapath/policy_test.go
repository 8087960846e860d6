package datapath_test

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/policy"
)

// Identities the policy tests give pods A, B and C.
const (
	identityA = maps.IdentityFirstUser + iota
	identityB
	identityC
)

// policyDatapath is a service datapath whose pods have identities in the
// ipcache, with the policy map at hand.
type policyDatapath struct {
	*svcDatapath
	pol *maps.Policy
}

func newPolicyDatapath(t *testing.T, svcs ...service) *policyDatapath {
	t.Helper()
	d := &policyDatapath{svcDatapath: newServiceDatapath(t, svcs...)}
	var err error
	if d.pol, err = maps.NewPolicy(d.node.Maps); err != nil {
		t.Fatal(err)
	}
	for ip, id := range map[netip.Addr]uint32{podA.IP: identityA, podB.IP: identityB, podC.IP: identityC} {
		if err := d.pol.SetIdentity(netip.PrefixFrom(ip, 32), id); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func (d *policyDatapath) enforce(t *testing.T, p pod, flags uint32) {
	t.Helper()
	if err := d.pol.SetEnforcement(p.IP, flags); err != nil {
		t.Fatal(err)
	}
}

func (d *policyDatapath) allow(t *testing.T, r maps.PolicyRule) {
	t.Helper()
	if err := d.pol.Allow(r); err != nil {
		t.Fatal(err)
	}
}

// expectPass sends frame from pod from and wants it routed into to,
// counted as forwarded.
func (d *policyDatapath) expectPass(t *testing.T, what string, from pod, frame, want []byte) {
	t.Helper()
	before := d.counts(t)
	r := d.send(t, from, frame)
	if r.verdict != tcActRedirect {
		t.Errorf("%s: verdict %d, want TC_ACT_REDIRECT; counters rose by%s", what, r.verdict, d.counts(t).since(before))
		return
	}
	expectBytes(t, what, r.out, want)
}

// expectDrop sends frame from pod from and wants it dropped, counted under
// hookReason.
func (d *policyDatapath) expectDrop(t *testing.T, what string, from pod, frame []byte, hookReason string) {
	t.Helper()
	before := d.counts(t)
	r := d.send(t, from, frame)
	if r.verdict != tcActShot {
		t.Errorf("%s: verdict %d, want TC_ACT_SHOT", what, r.verdict)
	}
	expectCountsRose(t, before, d.counts(t), hookReason, frame)
}

func (c counts) since(before counts) counts {
	out := counts{}
	for k, v := range c {
		if b := before[k]; b != v {
			out[k] = count{v.Packets - b.Packets, v.Bytes - b.Bytes}
		}
	}
	return out
}

func rule(ep pod, dir uint8, id uint32, proto uint8, first, last uint16) maps.PolicyRule {
	return maps.PolicyRule{Endpoint: ep.IP, Direction: dir, Identity: id, Proto: proto, PortFirst: first, PortLast: last}
}

// A pod its ingress policy selects gets nothing but what a rule allows: by
// the sender's identity (or any), protocol and destination port or port
// range. Pods no policy selects are untouched.
func TestPolicyIngress(t *testing.T) {
	d := newPolicyDatapath(t)
	d.enforce(t, podB, maps.EndpointPolicyIngress)
	const drop = "from_pod/drop_policy_ingress"

	syn := tcpFlow(podA.IP, 40000, podB.IP, 80, tcpSYN)
	d.expectDrop(t, "SYN with no rule", podA, syn.sentBy(podA), drop)
	d.expectDrop(t, "UDP with no rule", podA, udpFlow(podA.IP, 40001, podB.IP, 53).sentBy(podA), drop)
	ping := echoRequest(podA.IP, 7, podB.IP)
	d.expectDrop(t, "echo request with no rule", podA, ether(podA.NodeMAC, podA.MAC, ethPIPv4, ping.ip()), drop)
	toC := tcpFlow(podA.IP, 40002, podC.IP, 80, tcpSYN)
	d.expectPass(t, "to a pod no policy selects", podA, toC.sentBy(podA), toC.routedInto(podC))

	d.allow(t, rule(podB, maps.PolicyIngress, identityA, protoTCP, 80, 80))
	d.allow(t, rule(podB, maps.PolicyIngress, identityA, protoTCP, 8000, 8100))
	d.allow(t, rule(podB, maps.PolicyIngress, maps.IdentityAny, protoUDP, 53, 53))
	d.expectPass(t, "SYN to an allowed port", podA, syn.sentBy(podA), syn.routedInto(podB))
	// A range's prefixes are in the range trie, looked up for pods with
	// the ranges flag only; its single-port ends are exact keys.
	inRange := tcpFlow(podA.IP, 40009, podB.IP, 8064, tcpSYN)
	d.expectDrop(t, "SYN into a range, the pod not flagged for ranges", podA, inRange.sentBy(podA), drop)
	d.expectPass(t, "SYN to a range's single-port end", podA, tcpFlow(podA.IP, 40009, podB.IP, 8100, tcpSYN).sentBy(podA),
		tcpFlow(podA.IP, 40009, podB.IP, 8100, tcpSYN).routedInto(podB))
	d.enforce(t, podB, maps.EndpointPolicyIngress|maps.EndpointPolicyRanges)
	for _, port := range []uint16{8000, 8001, 8064, 8099, 8100} {
		f := tcpFlow(podA.IP, 40010, podB.IP, port, tcpSYN)
		d.expectPass(t, "SYN into the allowed range", podA, f.sentBy(podA), f.routedInto(podB))
	}
	for _, port := range []uint16{79, 81, 7999, 8101, 65535} {
		f := tcpFlow(podA.IP, 40011, podB.IP, port, tcpSYN)
		d.expectDrop(t, "SYN to a port no rule allows", podA, f.sentBy(podA), drop)
	}
	fromC := tcpFlow(podC.IP, 40012, podB.IP, 80, tcpSYN)
	d.expectDrop(t, "SYN from an identity no rule allows", podC, fromC.sentBy(podC), drop)
	udpFromC := udpFlow(podC.IP, 40013, podB.IP, 53)
	d.expectPass(t, "UDP from any identity to an allowed port", podC, udpFromC.sentBy(podC), udpFromC.routedInto(podB))
	udp80 := udpFlow(podA.IP, 40014, podB.IP, 80)
	d.expectDrop(t, "UDP to a TCP rule's port", podA, udp80.sentBy(podA), drop)

	// The connection's later packets and its replies pass without a
	// rule of their own, even where the reply's direction is enforced.
	d.enforce(t, podB, maps.EndpointPolicyIngress|maps.EndpointPolicyEgress)
	ack := syn
	ack.TCPFlags = tcpACK
	d.expectPass(t, "the connection's next segment", podA, ack.sentBy(podA), ack.routedInto(podB))
	synack := syn.answer(tcpSYN | tcpACK)
	d.expectPass(t, "the reply, B's egress enforced", podB, synack.sentBy(podB), synack.routedInto(podA))
	newFromB := tcpFlow(podB.IP, 40015, podA.IP, 80, tcpSYN)
	d.expectDrop(t, "a new connection from B, its egress enforced", podB, newFromB.sentBy(podB), "from_pod/drop_policy_egress")
}

// A pod its egress policy selects sends only what a rule allows, and the
// replies come back though its ingress is enforced too: its connections
// are tracked from their first packet.
func TestPolicyEgress(t *testing.T) {
	d := newPolicyDatapath(t)
	d.enforce(t, podA, maps.EndpointPolicyIngress|maps.EndpointPolicyEgress)
	const drop = "from_pod/drop_policy_egress"
	q := udpFlow(podA.IP, 40100, podB.IP, 53)
	d.expectDrop(t, "UDP with no rule", podA, q.sentBy(podA), drop)
	out := udpFlow(podA.IP, 40101, internetIP, 443)
	d.expectDrop(t, "UDP to the world with no rule", podA, out.sentBy(podA), drop)

	d.allow(t, rule(podA, maps.PolicyEgress, identityB, protoUDP, 53, 53))
	d.expectPass(t, "UDP allowed", podA, q.sentBy(podA), q.routedInto(podB))
	a := q.answer(0)
	d.expectPass(t, "its answer, A's ingress enforced", podB, a.sentBy(podB), a.routedInto(podA))
	d.expectDrop(t, "UDP to another identity", podA, udpFlow(podA.IP, 40102, podC.IP, 53).sentBy(podA), drop)

	// An ICMP error about the flow is related to it; one about a flow A
	// never had is not.
	quote := q
	quote.TTL--
	unreach := icmpError{Src: podB.IP, Dst: podA.IP, Type: 3, Code: 3, Quote: quote.ip(), TTL: 64}
	want := unreach
	want.TTL--
	d.expectPass(t, "port unreachable about the allowed flow", podB, ether(podB.NodeMAC, podB.MAC, ethPIPv4, unreach.ip()),
		ether(podA.MAC, podA.NodeMAC, ethPIPv4, want.ip()))
	stranger := udpFlow(podA.IP, 40103, podB.IP, 99)
	unrelated := icmpError{Src: podB.IP, Dst: podA.IP, Type: 3, Code: 3, Quote: stranger.ip(), TTL: 64}
	d.expectDrop(t, "port unreachable about no flow of A's", podB, ether(podB.NodeMAC, podB.MAC, ethPIPv4, unrelated.ip()), "from_pod/drop_policy_ingress")
}

// Policy applies to the backend a Service picked: the backend's ingress
// rules see the client, and the reply (the frontend restored) passes the
// client's enforced ingress as the service's reply.
func TestPolicyAfterServiceTranslation(t *testing.T) {
	d := newPolicyDatapath(t, clusterIP(protoTCP, backendB))
	d.enforce(t, podA, maps.EndpointPolicyIngress)
	d.enforce(t, podB, maps.EndpointPolicyIngress)
	d.enforce(t, podC, maps.EndpointPolicyIngress)
	d.allow(t, rule(podB, maps.PolicyIngress, identityA, protoTCP, backendPort, backendPort))

	syn := tcpFlow(podA.IP, 41000, vip, vipPort, tcpSYN)
	d.expectPass(t, "an allowed client through the ClusterIP", podA, syn.sentBy(podA), syn.to(podB.IP, backendPort).routedInto(podB))
	reply := syn.to(podB.IP, backendPort).answer(tcpSYN | tcpACK)
	d.expectPass(t, "the backend's reply", podB, reply.sentBy(podB), reply.from(vip, vipPort).routedInto(podA))
	fromC := tcpFlow(podC.IP, 41001, vip, vipPort, tcpSYN)
	d.expectDrop(t, "a client the backend's policy does not allow", podC, fromC.sentBy(podC), "from_pod/drop_policy_ingress")
}

// What the stack routes into a pod (to_pod) is decided by the pod's
// ingress policy too: the node itself always reaches its pods, an address
// the ipcache does not know is the world, and an ipBlock's CIDR is matched
// by its longest prefix (an except is a longer prefix of another identity).
func TestPolicyIntoPodsFromTheStack(t *testing.T) {
	d := newPolicyDatapath(t)
	d.enforce(t, podB, maps.EndpointPolicyIngress|maps.EndpointPolicyEgress)
	nodeIP := netip4("192.168.1.5")
	d.putNodeAddr(t, nodeIP, 2)
	const block, except = 5000, 5001
	if err := d.pol.SetIdentity(netip.MustParsePrefix("172.16.0.0/16"), block); err != nil {
		t.Fatal(err)
	}
	if err := d.pol.SetIdentity(netip.MustParsePrefix("172.16.1.0/24"), except); err != nil {
		t.Fatal(err)
	}
	d.allow(t, rule(podB, maps.PolicyIngress, block, protoTCP, 443, 443))

	stack := func(f flow) []byte { return ether(podB.MAC, podB.NodeMAC, ethPIPv4, f.ip()) }
	for _, tc := range []struct {
		name string
		f    flow
		pass bool
	}{
		{"the node's probe", tcpFlow(nodeIP, 50000, podB.IP, 8080, tcpSYN), true},
		{"the world", tcpFlow(internetIP, 50001, podB.IP, 443, tcpSYN), false},
		{"an allowed ipBlock", tcpFlow(netip4("172.16.2.9"), 50002, podB.IP, 443, tcpSYN), true},
		{"the ipBlock's except", tcpFlow(netip4("172.16.1.9"), 50003, podB.IP, 443, tcpSYN), false},
		{"an allowed ipBlock, another port", tcpFlow(netip4("172.16.2.9"), 50004, podB.IP, 80, tcpSYN), false},
	} {
		in := stack(tc.f)
		before := d.counts(t)
		r := d.runToPod(t, in)
		want, reason := uint32(tcActOK), "to_pod/pass"
		if !tc.pass {
			want, reason = tcActShot, "to_pod/drop_policy_ingress"
		}
		if r.verdict != want {
			t.Errorf("%s: verdict %d, want %d", tc.name, r.verdict, want)
		}
		expectCountsRose(t, before, d.counts(t), reason, in)
	}
	// The probe's answer leaves B, whose egress is enforced with no rule.
	answer := tcpFlow(nodeIP, 50000, podB.IP, 8080, tcpSYN).answer(tcpSYN | tcpACK)
	before := d.counts(t)
	r := d.send(t, podB, answer.sentBy(podB))
	if r.verdict == tcActShot {
		t.Errorf("the probe's answer was dropped: %s", d.counts(t).since(before))
	}
}

// An ipBlock holds pods too: a pod's address has its own identity and its
// CIDR's, and a rule for either lets it in; the block's except does not.
func TestPolicyIPBlockHoldsPods(t *testing.T) {
	d := newPolicyDatapath(t)
	d.enforce(t, podB, maps.EndpointPolicyIngress)
	const block, except = 5000, 5001
	if err := d.pol.SetCIDRIdentity(netip.MustParsePrefix("10.244.1.0/24"), block); err != nil {
		t.Fatal(err)
	}
	if err := d.pol.SetCIDRIdentity(netip.PrefixFrom(podC.IP, 32), except); err != nil {
		t.Fatal(err)
	}
	d.allow(t, rule(podB, maps.PolicyIngress, block, protoTCP, 80, 80))
	const drop = "from_pod/drop_policy_ingress"
	fromA := tcpFlow(podA.IP, 41000, podB.IP, 80, tcpSYN)
	d.expectPass(t, "a pod in the block", podA, fromA.sentBy(podA), fromA.routedInto(podB))
	d.expectDrop(t, "a pod in the block, another port", podA, tcpFlow(podA.IP, 41001, podB.IP, 81, tcpSYN).sentBy(podA), drop)
	d.expectDrop(t, "a pod in the block's except", podC, tcpFlow(podC.IP, 41002, podB.IP, 80, tcpSYN).sentBy(podC), drop)
	// The except's own rule lets it in.
	d.allow(t, rule(podB, maps.PolicyIngress, except, protoTCP, 80, 80))
	fromC := tcpFlow(podC.IP, 41003, podB.IP, 80, tcpSYN)
	d.expectPass(t, "the except, by its own rule", podC, fromC.sentBy(podC), fromC.routedInto(podB))
}

// A datagram's later fragments carry no ports: they pass as their first
// fragment did, and are dropped with it (without it, from_pod drops them
// before any policy, as it does every later fragment it cannot place).
func TestPolicyFragments(t *testing.T) {
	d := newPolicyDatapath(t)
	d.enforce(t, podB, maps.EndpointPolicyIngress)
	d.allow(t, rule(podB, maps.PolicyIngress, identityA, protoUDP, 53, 53))
	f := udpFlow(podA.IP, 40200, podB.IP, 53)
	f.Payload = make([]byte, 3000)
	frags := fragmented(f)
	for i, ip := range frags {
		in := ether(podA.NodeMAC, podA.MAC, ethPIPv4, ip)
		if r := d.send(t, podA, in); r.verdict != tcActRedirect {
			t.Errorf("fragment %d of an allowed datagram: verdict %d", i, r.verdict)
		}
	}
	other := f
	other.ID++
	later := fragmented(other)[1]
	d.expectDrop(t, "a later fragment whose first was not seen", podA, ether(podA.NodeMAC, podA.MAC, ethPIPv4, later), "from_pod/drop_frag_unknown")
	denied := udpFlow(podA.IP, 40201, podB.IP, 54)
	denied.Payload = make([]byte, 3000)
	denied.ID = 0x7777
	dfr := fragmented(denied)
	for _, ip := range dfr {
		d.expectDrop(t, "a fragment of a denied datagram", podA, ether(podA.NodeMAC, podA.MAC, ethPIPv4, ip), "from_pod/drop_policy_ingress")
	}
}

// NetworkPolicies compiled (policy.Compile) and written (policy.Apply) as
// the agent does: the datapath then lets in what the policy allows and
// nothing else; a second Apply of the same state writes nothing; the
// policy removed, the pod is open again.
func TestPolicyCompiledAndApplied(t *testing.T) {
	d := newPolicyDatapath(t)
	pods := []policy.Pod{
		{Namespace: "shop", Name: "a", Labels: map[string]string{"app": "web"}, IP: podA.IP, Node: "n1"},
		{Namespace: "shop", Name: "b", Labels: map[string]string{"app": "db"}, IP: podB.IP, Node: "n1",
			Ports: []policy.NamedPort{{Name: "pg", Proto: protoTCP, Port: 5432}}},
		{Namespace: "shop", Name: "c", Labels: map[string]string{"app": "batch"}, IP: podC.IP, Node: "n1"},
	}
	ns := []policy.Namespace{{Name: "shop"}}
	tcpProto := corev1.ProtocolTCP
	pg := intstr.FromString("pg")
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcpProto, Port: &pg}},
			}},
		},
	}
	alloc := policy.NewAllocator()
	apply := func(pols ...*networkingv1.NetworkPolicy) policy.Changes {
		t.Helper()
		ch, err := policy.Apply(d.pol, policy.Compile("n1", pods, ns, pols, alloc))
		if err != nil {
			t.Fatal(err)
		}
		return ch
	}
	if ch := apply(pol); ch.KeysAdded == 0 || ch.EndpointsChanged != 1 {
		t.Fatalf("first apply: %s", ch)
	}
	if ch := apply(pol); ch != (policy.Changes{}) {
		t.Errorf("the same state again wrote %s", ch)
	}
	const drop = "from_pod/drop_policy_ingress"
	ok := tcpFlow(podA.IP, 42000, podB.IP, 5432, tcpSYN)
	d.expectPass(t, "web to db's named port", podA, ok.sentBy(podA), ok.routedInto(podB))
	d.expectDrop(t, "web to another port", podA, tcpFlow(podA.IP, 42001, podB.IP, 5433, tcpSYN).sentBy(podA), drop)
	d.expectDrop(t, "batch to db", podC, tcpFlow(podC.IP, 42002, podB.IP, 5432, tcpSYN).sentBy(podC), drop)

	if ch := apply(); ch.KeysDeleted == 0 || ch.EndpointsChanged != 1 {
		t.Errorf("policy removed: %s", ch)
	}
	open := tcpFlow(podC.IP, 42003, podB.IP, 5432, tcpSYN)
	d.expectPass(t, "batch to db, no policy left", podC, open.sentBy(podC), open.routedInto(podB))
}

// A Writer writes each state's difference against what it wrote before,
// without reading the maps back: a key deleted behind its back stays
// deleted (and its connection denied) until Reread, after which the next
// Write repairs it.
func TestPolicyWriterRepairsAfterReread(t *testing.T) {
	d := newPolicyDatapath(t)
	pods := []policy.Pod{
		{Namespace: "shop", Name: "a", Labels: map[string]string{"app": "web"}, IP: podA.IP, Node: "n1"},
		{Namespace: "shop", Name: "b", Labels: map[string]string{"app": "db"}, IP: podB.IP, Node: "n1"},
	}
	ns := []policy.Namespace{{Name: "shop"}}
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
			}},
		},
	}
	st := policy.Compile("n1", pods, ns, []*networkingv1.NetworkPolicy{pol}, policy.NewAllocator())
	w := policy.NewWriter(d.pol)
	if ch, err := w.Write(st); err != nil || ch.KeysAdded != 1 {
		t.Fatalf("first write: %s, %v", ch, err)
	}
	keys, err := d.pol.Keys()
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys {
		if err := d.pol.DeleteKey(k); err != nil {
			t.Fatal(err)
		}
	}
	const drop = "from_pod/drop_policy_ingress"
	d.expectDrop(t, "web to db, its key deleted behind the writer", podA, tcpFlow(podA.IP, 43000, podB.IP, 80, tcpSYN).sentBy(podA), drop)
	if ch, err := w.Write(st); err != nil || ch != (policy.Changes{}) {
		t.Errorf("the same state again, from what was written: %s, %v (want nothing written)", ch, err)
	}
	w.Reread()
	if ch, err := w.Write(st); err != nil || ch.KeysAdded != 1 {
		t.Errorf("after Reread: %s, %v (want the key written again)", ch, err)
	}
	ok := tcpFlow(podA.IP, 43001, podB.IP, 80, tcpSYN)
	d.expectPass(t, "web to db, repaired", podA, ok.sentBy(podA), ok.routedInto(podB))
}

// A policy change leaves established connections alone but meets every
// new one: a SYN on the tuple of a tracked connection is decided by the
// policy as it is now.
func TestPolicyNewSYNOnTrackedTuple(t *testing.T) {
	d := newPolicyDatapath(t)
	d.enforce(t, podB, maps.EndpointPolicyIngress)
	r := rule(podB, maps.PolicyIngress, identityA, protoTCP, 80, 80)
	d.allow(t, r)
	syn := tcpFlow(podA.IP, 44000, podB.IP, 80, tcpSYN)
	d.expectPass(t, "SYN, allowed", podA, syn.sentBy(podA), syn.routedInto(podB))
	if err := d.pol.Revoke(r); err != nil {
		t.Fatal(err)
	}
	ack := syn
	ack.TCPFlags = tcpACK
	d.expectPass(t, "the tracked connection's next segment, the rule revoked", podA, ack.sentBy(podA), ack.routedInto(podB))
	d.expectDrop(t, "a new SYN on the same tuple, the rule revoked", podA, syn.sentBy(podA), "from_pod/drop_policy_ingress")
}

// A reset ends a tracked connection's entry at once (whichever side sends
// it), rather than leaving it to the LRU: a later packet is decided by the
// policy again.
func TestPolicyResetForgetsConnection(t *testing.T) {
	d := newPolicyDatapath(t)
	d.enforce(t, podB, maps.EndpointPolicyIngress)
	d.allow(t, rule(podB, maps.PolicyIngress, identityA, protoTCP, 80, 80))
	ct := d.node.Maps[maps.MapPolicyCT]
	entries := func() int {
		n := 0
		var k maps.PolicyCtKey
		var v maps.PolicyCtEntry
		for it := ct.Iterate(); it.Next(&k, &v); {
			n++
		}
		return n
	}
	for i, byServer := range []bool{false, true} {
		syn := tcpFlow(podA.IP, uint16(45000+i), podB.IP, 80, tcpSYN)
		d.expectPass(t, "SYN", podA, syn.sentBy(podA), syn.routedInto(podB))
		if n := entries(); n != 1 {
			t.Fatalf("%d policy_ct entries after the SYN, want 1", n)
		}
		if byServer {
			rst := syn.answer(tcpRST | tcpACK)
			d.expectPass(t, "the server's reset", podB, rst.sentBy(podB), rst.routedInto(podA))
		} else {
			rst := syn
			rst.TCPFlags = tcpRST | tcpACK
			d.expectPass(t, "the client's reset", podA, rst.sentBy(podA), rst.routedInto(podB))
		}
		if n := entries(); n != 0 {
			t.Errorf("reset (by the server: %v): %d policy_ct entries left, want 0", byServer, n)
		}
	}
}
