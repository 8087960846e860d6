package policy

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	pmaps "github.com/podpath/podpath/maps"
)

const tcp, udp = 6, 17

var (
	namespaces = []Namespace{
		{Name: "shop", Labels: map[string]string{"team": "shop"}},
		{Name: "ops", Labels: map[string]string{"team": "ops", "tier": "infra"}},
	}
	web = Pod{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web"}, IP: netip.MustParseAddr("10.0.1.10"), Node: "n1",
		Ports: []NamedPort{{Name: "http", Proto: tcp, Port: 8080}}}
	web2 = Pod{Namespace: "shop", Name: "web-2", Labels: map[string]string{"app": "web"}, IP: netip.MustParseAddr("10.0.2.10"), Node: "n2",
		Ports: []NamedPort{{Name: "http", Proto: tcp, Port: 8080}}}
	db = Pod{Namespace: "shop", Name: "db-0", Labels: map[string]string{"app": "db"}, IP: netip.MustParseAddr("10.0.1.20"), Node: "n1",
		Ports: []NamedPort{{Name: "pg", Proto: tcp, Port: 5432}}}
	prom = Pod{Namespace: "ops", Name: "prom-0", Labels: map[string]string{"app": "prom"}, IP: netip.MustParseAddr("10.0.2.30"), Node: "n2"}
	dns  = Pod{Namespace: "ops", Name: "dns-0", Labels: map[string]string{"app": "dns"}, IP: netip.MustParseAddr("10.0.1.40"), Node: "n1",
		Ports: []NamedPort{{Name: "dns", Proto: udp, Port: 53}, {Name: "dns-tcp", Proto: tcp, Port: 53}}}
	allPods = []Pod{web, web2, db, prom, dns}
)

func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func port(proto corev1.Protocol, p intstr.IntOrString) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

func netpol(ns, name string, podSel *metav1.LabelSelector, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	spec.PodSelector = *podSel
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

// rulesOf renders an endpoint's rules as "dir peer proto first-last",
// peers named by the pods or CIDR of their identity.
func rulesOf(st State, ep netip.Addr) []string {
	names := map[uint32]string{pmaps.IdentityAny: "any"}
	for pfx, id := range st.CIDRs {
		names[id] = pfx.String()
	}
	for pfx, id := range st.Identities {
		name := pfx.String()
		for _, p := range allPods {
			if netip.PrefixFrom(p.IP, 32) == pfx {
				name = p.Namespace + "/" + p.Labels["app"]
			}
		}
		names[id] = name
	}
	var out []string
	for _, r := range st.Endpoints[ep].Rules {
		dir := "in"
		if r.Direction == pmaps.PolicyEgress {
			dir = "out"
		}
		out = append(out, strings.Join([]string{dir, names[r.Identity], itoa(int(r.Proto)), itoa(int(r.PortFirst)) + "-" + itoa(int(r.PortLast))}, " "))
	}
	slices.Sort(out)
	return out
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestCompile(t *testing.T) {
	tests := []struct {
		name  string
		pols  []*networkingv1.NetworkPolicy
		ep    Pod
		flags uint32
		rules []string
	}{
		{
			name: "no policy: nothing enforced", ep: db,
		},
		{
			name: "default deny ingress: an empty ingress list",
			pols: []*networkingv1.NetworkPolicy{netpol("shop", "deny", sel(), networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}})},
			ep: db, flags: pmaps.EndpointPolicyIngress,
		},
		{
			name: "podSelector in the policy's namespace, a named port of the pod",
			pols: []*networkingv1.NetworkPolicy{netpol("shop", "db", sel("app", "db"), networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "web")}},
					Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, intstr.FromString("pg"))},
				}}})},
			ep: db, flags: pmaps.EndpointPolicyIngress,
			// web-1 and web-2 share the label set: one identity.
			rules: []string{"in shop/web 6 5432-5432"},
		},
		{
			name: "namespaceSelector alone, and with a podSelector in the same peer",
			pols: []*networkingv1.NetworkPolicy{netpol("shop", "db", sel("app", "db"), networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("tier", "infra"), PodSelector: sel("app", "prom")}},
						Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, intstr.FromInt32(9187))}},
					{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("team", "shop")}}},
				}})},
			ep: db, flags: pmaps.EndpointPolicyIngress,
			rules: []string{"in ops/prom 6 9187-9187", "in shop/db 0 0-0", "in shop/web 0 0-0"},
		},
		{
			name: "egress: named ports of the peers, endPort, an ipBlock with except, UDP",
			pols: []*networkingv1.NetworkPolicy{netpol("shop", "web-out", sel("app", "web"), networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{
					{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel(), PodSelector: sel("app", "dns")}},
						Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolUDP, intstr.FromString("dns"))}},
					{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.128/25"}}}},
						Ports: []networkingv1.NetworkPolicyPort{func() networkingv1.NetworkPolicyPort {
							p := port(corev1.ProtocolTCP, intstr.FromInt32(8000))
							end := int32(8100)
							p.EndPort = &end
							return p
						}()}},
				}})},
			ep: web, flags: pmaps.EndpointPolicyEgress | pmaps.EndpointPolicyRanges,
			rules: []string{"out 192.0.2.0/24 6 8000-8100", "out ops/dns 17 53-53"},
		},
		{
			name: "two policies add up; Egress inferred from egress rules",
			pols: []*networkingv1.NetworkPolicy{
				netpol("shop", "a", sel("app", "db"), networkingv1.NetworkPolicySpec{
					Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "web")}}}}}),
				netpol("shop", "b", sel(), networkingv1.NetworkPolicySpec{
					Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolUDP, intstr.FromInt32(53))}}}}),
				netpol("ops", "other-namespace", sel(), networkingv1.NetworkPolicySpec{}),
			},
			ep: db, flags: pmaps.EndpointPolicyIngress | pmaps.EndpointPolicyEgress,
			rules: []string{"in shop/web 0 0-0", "out any 17 53-53"},
		},
		{
			name: "a rule with no peers: every peer",
			pols: []*networkingv1.NetworkPolicy{netpol("shop", "open", sel("app", "db"), networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{{}}})},
			ep: db, flags: pmaps.EndpointPolicyIngress, rules: []string{"in any 0 0-0"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := Compile("n1", allPods, namespaces, tc.pols, NewAllocator())
			if len(st.Warnings) > 0 {
				t.Logf("warnings: %v", st.Warnings)
			}
			if got := st.Endpoints[tc.ep.IP].Flags; got != tc.flags {
				t.Errorf("flags %d, want %d", got, tc.flags)
			}
			if got := rulesOf(st, tc.ep.IP); !slices.Equal(got, tc.rules) {
				t.Errorf("rules\n got %q\nwant %q", got, tc.rules)
			}
			for ip := range st.Endpoints {
				if ip == web2.IP || ip == prom.IP {
					t.Errorf("an endpoint for %s, a pod of another node", ip)
				}
			}
			if _, ok := st.Identities[netip.PrefixFrom(web2.IP, 32)]; !ok {
				t.Errorf("no identity for %s, a pod of another node", web2.IP)
			}
		})
	}
}

// The ipBlock's except is an identity of its own, a longer prefix than
// the block's, and the block's rule does not name it.
func TestCompileIPBlockExcept(t *testing.T) {
	pols := []*networkingv1.NetworkPolicy{netpol("shop", "p", sel("app", "db"), networkingv1.NetworkPolicySpec{
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
			{IPBlock: &networkingv1.IPBlock{CIDR: "172.16.0.0/12", Except: []string{"172.16.1.0/24"}}}}}}})}
	st := Compile("n1", allPods, namespaces, pols, NewAllocator())
	block, except := st.CIDRs[netip.MustParsePrefix("172.16.0.0/12")], st.CIDRs[netip.MustParsePrefix("172.16.1.0/24")]
	if block == 0 || except == 0 || block == except {
		t.Fatalf("identities: block %d, except %d", block, except)
	}
	for _, r := range st.Endpoints[db.IP].Rules {
		if r.Identity == except {
			t.Errorf("rule %s names the except", r)
		}
	}
	if len(st.Endpoints[db.IP].Rules) != 1 || st.Endpoints[db.IP].Rules[0].Identity != block {
		t.Errorf("rules %v, want one for the block's identity %d", st.Endpoints[db.IP].Rules, block)
	}
}

// An egress rule to every peer on a named port allows, for each pod
// identity, the port its pods give that name (the name is the
// destination's), and numeric ports to every peer.
func TestCompileEgressNamedPortToAll(t *testing.T) {
	http := intstr.FromString("http")
	pols := []*networkingv1.NetworkPolicy{netpol("ops", "out", sel("app", "prom"), networkingv1.NetworkPolicySpec{
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{
			port(corev1.ProtocolTCP, http), port(corev1.ProtocolUDP, intstr.FromInt32(53))}}}})}
	st := Compile("n2", allPods, namespaces, pols, NewAllocator())
	got := rulesOf(st, prom.IP)
	want := []string{"out any 17 53-53", "out shop/web 6 8080-8080"}
	if !slices.Equal(got, want) {
		t.Errorf("rules\n got %q\nwant %q", got, want)
	}
}

// An ipBlock holding pods' addresses selects those pods too: a CIDR of
// one pod's address is an identity of its own, beside the pod's, and a
// block around pods names the block's identity (the datapath looks up a
// pod's address's CIDR as well as its own identity).
func TestCompileIPBlockOfPods(t *testing.T) {
	one := netip.PrefixFrom(web.IP, 32)
	pols := []*networkingv1.NetworkPolicy{netpol("shop", "p", sel("app", "db"), networkingv1.NetworkPolicySpec{
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
			{IPBlock: &networkingv1.IPBlock{CIDR: one.String()}}}}}})}
	st := Compile("n1", allPods, namespaces, pols, NewAllocator())
	pod, cidr := st.Identities[one], st.CIDRs[one]
	if pod == 0 || cidr == 0 || pod == cidr {
		t.Fatalf("%s: pod identity %d, CIDR identity %d: want both, distinct", one, pod, cidr)
	}
	if rules := st.Endpoints[db.IP].Rules; len(rules) != 1 || rules[0].Identity != cidr {
		t.Errorf("rules %v, want one for the CIDR's identity %d", rules, cidr)
	}
}

// Identities stay the same across compilations while their label set
// exists, and come back from a restore after a restart.
func TestAllocatorStable(t *testing.T) {
	a := NewAllocator()
	st1 := Compile("n1", allPods, namespaces, nil, a)
	st2 := Compile("n1", allPods[1:], namespaces, nil, a)
	for pfx, id := range st2.Identities {
		if st1.Identities[pfx] != id {
			t.Errorf("%s: identity %d, was %d", pfx, id, st1.Identities[pfx])
		}
	}
	b := NewAllocator()
	for _, p := range allPods {
		b.Restore(PodKey(p), st1.Identities[netip.PrefixFrom(p.IP, 32)])
	}
	st3 := Compile("n1", slices.Concat([]Pod{{Namespace: "new", Labels: map[string]string{"a": "b"}, IP: netip.MustParseAddr("10.0.9.9")}}, allPods), namespaces, nil, b)
	for _, p := range allPods {
		pfx := netip.PrefixFrom(p.IP, 32)
		if st3.Identities[pfx] != st1.Identities[pfx] {
			t.Errorf("%s after a restore: identity %d, was %d", p.Name, st3.Identities[pfx], st1.Identities[pfx])
		}
	}
	if id := st3.Identities[netip.MustParsePrefix("10.0.9.9/32")]; id <= st1.Identities[netip.PrefixFrom(dns.IP, 32)] && slices.Contains(valuesOf(st1.Identities), id) {
		t.Errorf("a new label set got identity %d, already another's", id)
	}
}

func valuesOf(m map[netip.Prefix]uint32) []uint32 {
	var out []uint32
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
