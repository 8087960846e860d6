// Package policy turns Kubernetes NetworkPolicies into the datapath's
// policy state (bpf/lib/policy.h): every pod's and every ipBlock CIDR's
// identity (identities, ipcache), and for each pod of this node that a policy
// selects, the directions enforced and the (identity, protocol, port
// range) it may exchange packets with.
//
// Pods with the same labels in the same namespace share an identity, so
// the rules of a pod grow with the label sets its policies select, not
// with their pods. Identities are this node's numbers: an Allocator keeps
// them stable for as long as their label set exists, and across restarts
// when restored from the pinned identities and ipcache.
package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	pmaps "github.com/podpath/podpath/maps"
)

// Pod is what policy needs of a pod.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	IP              netip.Addr
	// Node is the node the pod runs on.
	Node string
	// Ports are the containers' named ports.
	Ports []NamedPort
}

// NamedPort is a container port with a name.
type NamedPort struct {
	Name  string
	Proto uint8
	Port  uint16
}

// Namespace is what policy needs of a namespace.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Endpoint is one local pod's policy.
type Endpoint struct {
	// Flags are maps.EndpointPolicyIngress and/or EndpointPolicyEgress:
	// the directions a policy selects the pod for, and
	// EndpointPolicyRanges when some rule is a port range.
	Flags uint32
	Rules []pmaps.PolicyRule
}

// State is what the datapath's maps should hold.
type State struct {
	// Identities are every pod's address, as a /32 (the identities map).
	Identities map[netip.Prefix]uint32
	// CIDRs are every ipBlock's CIDR and except (the ipcache). A pod's
	// address has both its own identity and its CIDR's.
	CIDRs map[netip.Prefix]uint32
	// Endpoints are the policies of this node's pods, by address; a pod
	// no policy selects has none.
	Endpoints map[netip.Addr]Endpoint
	// Local are the addresses of this node's pods the computation knew:
	// a new pod's endpoint stays closed (pending) until it is among them.
	Local map[netip.Addr]bool
	// Names say what each identity stands for ("shop: app=web", a CIDR)
	// and which pod each address is ("shop/web-1"), for people.
	Names Names
	// Warnings name what could not be honoured (an unknown protocol, a
	// named port no pod has), each once.
	Warnings []string
}

// identityKey is the label set of a pod identity: its namespace and its
// labels, canonical.
func identityKey(namespace string, l map[string]string) string {
	keys := slices.Sorted(maps.Keys(l))
	var b strings.Builder
	b.WriteString("pod:")
	b.WriteString(namespace)
	for _, k := range keys {
		fmt.Fprintf(&b, ";%s=%s", k, l[k])
	}
	return b.String()
}

func cidrKey(p netip.Prefix) string { return "cidr:" + p.String() }

// Allocator hands out identities from maps.IdentityFirstUser up, one per
// label set or CIDR, the same one for as long as it is in use.
type Allocator struct {
	ids  map[string]uint32
	next uint32
}

// NewAllocator is an allocator with nothing handed out.
func NewAllocator() *Allocator {
	return &Allocator{ids: map[string]uint32{}, next: pmaps.IdentityFirstUser}
}

// Restore makes key's identity id again (after a restart: the pinned
// ipcache says which identity a pod's address had).
func (a *Allocator) Restore(key string, id uint32) {
	if id < pmaps.IdentityFirstUser {
		return
	}
	if _, ok := a.ids[key]; ok {
		return
	}
	for _, other := range a.ids {
		if other == id {
			return // taken by another label set: the key gets a new one
		}
	}
	a.ids[key] = id
	if id >= a.next {
		a.next = id + 1
	}
}

func (a *Allocator) get(key string, used map[string]bool) uint32 {
	used[key] = true
	if id, ok := a.ids[key]; ok {
		return id
	}
	id := a.next
	a.next++
	a.ids[key] = id
	return id
}

// release forgets what the last compilation did not use.
func (a *Allocator) release(used map[string]bool) {
	for k := range a.ids {
		if !used[k] {
			delete(a.ids, k)
		}
	}
}

// PodKey is the identity key of a pod, for Restore.
func PodKey(p Pod) string { return identityKey(p.Namespace, p.Labels) }

// CIDRKey is the identity key of an ipBlock's CIDR, for Restore.
func CIDRKey(p netip.Prefix) string { return cidrKey(p) }

type identity struct {
	id        uint32
	namespace string
	labels    labels.Set
	pods      []*Pod
}

// Compile computes the state for node from every pod, namespace and
// NetworkPolicy of the cluster.
func Compile(node string, pods []Pod, namespaces []Namespace, pols []*networkingv1.NetworkPolicy, alloc *Allocator) State {
	st := State{Identities: map[netip.Prefix]uint32{}, CIDRs: map[netip.Prefix]uint32{}, Endpoints: map[netip.Addr]Endpoint{}, Local: map[netip.Addr]bool{},
		Names: Names{Identities: map[uint32]string{}, Pods: map[netip.Addr]string{}}}
	used := map[string]bool{}
	warned := map[string]bool{}
	warn := func(format string, args ...any) {
		w := fmt.Sprintf(format, args...)
		if !warned[w] {
			warned[w] = true
			st.Warnings = append(st.Warnings, w)
		}
	}
	nsLabels := map[string]labels.Set{}
	for _, ns := range namespaces {
		nsLabels[ns.Name] = labels.Set(ns.Labels)
	}

	// Identities of pods, by label set.
	byKey := map[string]*identity{}
	var idents []*identity
	for i := range pods {
		p := &pods[i]
		if !p.IP.Is4() {
			continue
		}
		k := identityKey(p.Namespace, p.Labels)
		id, ok := byKey[k]
		if !ok {
			id = &identity{id: alloc.get(k, used), namespace: p.Namespace, labels: labels.Set(p.Labels)}
			byKey[k] = id
			idents = append(idents, id)
			st.Names.Identities[id.id] = p.Namespace + ": " + id.labels.String()
		}
		st.Names.Pods[p.IP] = p.Namespace + "/" + p.Name
		id.pods = append(id.pods, p)
		st.Identities[netip.PrefixFrom(p.IP, 32)] = id.id
	}
	sort.Slice(idents, func(i, j int) bool { return idents[i].id < idents[j].id })
	index := newIdentityIndex(idents, nsLabels)

	// Identities of CIDRs: every ipBlock's CIDR and except.
	var cidrs []netip.Prefix
	for _, pol := range pols {
		for _, peer := range allPeers(pol) {
			if peer.IPBlock == nil {
				continue
			}
			for _, s := range append([]string{peer.IPBlock.CIDR}, peer.IPBlock.Except...) {
				pfx, err := netip.ParsePrefix(s)
				if err != nil || !pfx.Addr().Is4() {
					continue // IPv6 or malformed: the API server validates; podpath is IPv4
				}
				pfx = pfx.Masked()
				if _, ok := st.CIDRs[pfx]; !ok {
					st.CIDRs[pfx] = alloc.get(cidrKey(pfx), used)
					st.Names.Identities[st.CIDRs[pfx]] = "cidr " + pfx.String()
					cidrs = append(cidrs, pfx)
				}
			}
		}
	}
	alloc.release(used)

	// Policies of this node's pods.
	for i := range pods {
		p := &pods[i]
		if p.Node != node || !p.IP.Is4() {
			continue
		}
		st.Local[p.IP] = true
		var ep Endpoint
		rules := map[pmaps.PolicyRule]bool{}
		for _, pol := range pols {
			if pol.Namespace != p.Namespace {
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(&pol.Spec.PodSelector)
			if err != nil || !sel.Matches(labels.Set(p.Labels)) {
				continue
			}
			ingress, egress := policyTypes(pol)
			if ingress {
				ep.Flags |= pmaps.EndpointPolicyIngress
				for _, r := range pol.Spec.Ingress {
					addRules(rules, p, pmaps.PolicyIngress, pol.Namespace, r.From, r.Ports, index, cidrs, st.CIDRs, warn)
				}
			}
			if egress {
				ep.Flags |= pmaps.EndpointPolicyEgress
				for _, r := range pol.Spec.Egress {
					addRules(rules, p, pmaps.PolicyEgress, pol.Namespace, r.To, r.Ports, index, cidrs, st.CIDRs, warn)
				}
			}
		}
		if ep.Flags == 0 {
			continue
		}
		ep.Rules = slices.SortedFunc(maps.Keys(rules), compareRules)
		if slices.ContainsFunc(ep.Rules, pmaps.PolicyRule.Ranged) {
			ep.Flags |= pmaps.EndpointPolicyRanges
		}
		st.Endpoints[p.IP] = ep
	}
	return st
}

func compareRules(a, b pmaps.PolicyRule) int {
	switch {
	case a.Direction != b.Direction:
		return int(a.Direction) - int(b.Direction)
	case a.Identity != b.Identity:
		return int(a.Identity) - int(b.Identity)
	case a.Proto != b.Proto:
		return int(a.Proto) - int(b.Proto)
	case a.PortFirst != b.PortFirst:
		return int(a.PortFirst) - int(b.PortFirst)
	}
	return int(a.PortLast) - int(b.PortLast)
}

// policyTypes are the directions a policy applies to: as listed, or when
// none are, Ingress always and Egress when it has egress rules.
func policyTypes(pol *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(pol.Spec.PolicyTypes) == 0 {
		return true, len(pol.Spec.Egress) > 0
	}
	for _, t := range pol.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func allPeers(pol *networkingv1.NetworkPolicy) []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for _, r := range pol.Spec.Ingress {
		out = append(out, r.From...)
	}
	for _, r := range pol.Spec.Egress {
		out = append(out, r.To...)
	}
	return out
}

// peerIdentities are the identities a rule's peers select (nil for every
// peer: a rule with no peers).
// blockPods (an egress rule naming ports) asks for the pods inside the
// rule's ipBlocks too, whose named ports the rule names.
func peerIdentities(ns string, peers []networkingv1.NetworkPolicyPeer, index *identityIndex, blockPods bool,
	cidrs []netip.Prefix, ids map[netip.Prefix]uint32, warn func(string, ...any)) (all bool, out []*identity, cidrIDs []uint32, cidrPods []*Pod) {
	if len(peers) == 0 {
		return true, nil, nil, nil
	}
	seen := map[uint32]bool{}
	for _, peer := range peers {
		switch {
		case peer.IPBlock != nil:
			block, err := netip.ParsePrefix(peer.IPBlock.CIDR)
			if err != nil || !block.Addr().Is4() {
				warn("ipBlock %q: not an IPv4 CIDR, left out", peer.IPBlock.CIDR)
				continue
			}
			block = block.Masked()
			var excepts []netip.Prefix
			for _, e := range peer.IPBlock.Except {
				if ep, err := netip.ParsePrefix(e); err == nil && ep.Addr().Is4() {
					excepts = append(excepts, ep.Masked())
				}
			}
			// Every CIDR the ipcache holds inside the block and outside
			// its excepts: an address matches its longest prefix. Pods'
			// addresses too: each also has the identity of its CIDR.
			for _, c := range cidrs {
				if !within(c, block) || slices.ContainsFunc(excepts, func(e netip.Prefix) bool { return within(c, e) }) {
					continue
				}
				if id := ids[c]; !seen[id] {
					seen[id] = true
					cidrIDs = append(cidrIDs, id)
				}
			}
			// The pods inside, whose named ports an egress rule names.
			if blockPods {
				cidrPods = append(cidrPods, index.podsIn(block, excepts)...)
			}
		case peer.PodSelector != nil || peer.NamespaceSelector != nil:
			podSel := labels.Everything()
			if peer.PodSelector != nil {
				s, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
				if err != nil {
					warn("podSelector %v: %v", peer.PodSelector, err)
					continue
				}
				podSel = s
			}
			var nsSel labels.Selector // nil: the policy's own namespace
			if peer.NamespaceSelector != nil {
				s, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
				if err != nil {
					warn("namespaceSelector %v: %v", peer.NamespaceSelector, err)
					continue
				}
				nsSel = s
			}
			var nsOK map[string]bool
			if nsSel != nil {
				nsOK = index.namespaces(nsSel)
			}
			for _, id := range index.candidates(ns, nsOK, peer.PodSelector) {
				if nsSel == nil && id.namespace != ns {
					continue
				}
				if nsSel != nil && !nsOK[id.namespace] {
					continue
				}
				if !podSel.Matches(id.labels) || seen[id.id] {
					continue
				}
				seen[id.id] = true
				out = append(out, id)
			}
		}
	}
	return false, out, cidrIDs, cidrPods
}

// identityIndex finds the pod identities a peer may select without
// matching every identity of the cluster against it: by namespace, and by
// each of their labels.
type identityIndex struct {
	all      []*identity
	byNS     map[string][]*identity
	byLabel  map[string][]*identity // "key=value"
	nsLabels map[string]labels.Set
	nsNames  []string
	// nsMatch caches which namespaces a namespace selector (by its
	// canonical string) matched.
	nsMatch map[string]map[string]bool
}

func newIdentityIndex(idents []*identity, nsLabels map[string]labels.Set) *identityIndex {
	x := &identityIndex{byNS: map[string][]*identity{}, byLabel: map[string][]*identity{}, nsLabels: nsLabels,
		nsMatch: map[string]map[string]bool{}, all: idents}
	for _, id := range idents {
		if _, ok := x.byNS[id.namespace]; !ok {
			x.nsNames = append(x.nsNames, id.namespace)
		}
		x.byNS[id.namespace] = append(x.byNS[id.namespace], id)
		for k, v := range id.labels {
			x.byLabel[k+"="+v] = append(x.byLabel[k+"="+v], id)
		}
	}
	return x
}

// namespaces are the namespaces (of pods with an identity) whose labels
// sel matches, computed once per selector.
func (x *identityIndex) namespaces(sel labels.Selector) map[string]bool {
	key := sel.String()
	if m, ok := x.nsMatch[key]; ok {
		return m
	}
	m := map[string]bool{}
	for _, n := range x.nsNames {
		if sel.Matches(x.nsLabels[n]) {
			m[n] = true
		}
	}
	x.nsMatch[key] = m
	return m
}

// candidates are the identities that may match a peer of the policy's
// namespace ns (nsOK nil: that namespace only, else the namespaces its
// namespace selector matched) with pod selector podSel: those with the
// rarest of podSel's matchLabels, else those of the namespaces. The
// caller still matches each in full.
func (x *identityIndex) candidates(ns string, nsOK map[string]bool, podSel *metav1.LabelSelector) []*identity {
	var best []*identity
	found := false
	if podSel != nil {
		for k, v := range podSel.MatchLabels {
			if l := x.byLabel[k+"="+v]; !found || len(l) < len(best) {
				best, found = l, true
			}
		}
	}
	if found {
		return best
	}
	if nsOK == nil {
		return x.byNS[ns]
	}
	var out []*identity
	for _, n := range x.nsNames {
		if nsOK[n] {
			out = append(out, x.byNS[n]...)
		}
	}
	return out
}

// podsIn are the pods with an identity whose address is inside block and
// outside every except.
func (x *identityIndex) podsIn(block netip.Prefix, excepts []netip.Prefix) []*Pod {
	var out []*Pod
	for _, id := range x.all {
		for _, pod := range id.pods {
			if block.Contains(pod.IP) && !slices.ContainsFunc(excepts, func(e netip.Prefix) bool { return e.Contains(pod.IP) }) {
				out = append(out, pod)
			}
		}
	}
	return out
}

// within says whether prefix c lies inside prefix p.
func within(c, p netip.Prefix) bool { return c.Bits() >= p.Bits() && p.Contains(c.Addr()) }

// addRules adds what one ingress or egress rule of a policy allows pod p.
func addRules(rules map[pmaps.PolicyRule]bool, p *Pod, dir uint8, ns string, peers []networkingv1.NetworkPolicyPeer,
	ports []networkingv1.NetworkPolicyPort, index *identityIndex,
	cidrs []netip.Prefix, ids map[netip.Prefix]uint32, warn func(string, ...any)) {
	blockPods := dir == pmaps.PolicyEgress && slices.ContainsFunc(ports, isNamed)
	all, peerIDs, cidrIDs, cidrPods := peerIdentities(ns, peers, index, blockPods, cidrs, ids, warn)
	add := func(id uint32, pps []portRange) {
		for _, pr := range pps {
			rules[pmaps.PolicyRule{Endpoint: p.IP, Direction: dir, Identity: id, Proto: pr.proto, PortFirst: pr.first, PortLast: pr.last}] = true
		}
	}
	// Numeric ports are the same whoever the peer is; named ones are the
	// destination's: p's own for ingress, each peer pod's for egress.
	if all && (dir == pmaps.PolicyIngress || !slices.ContainsFunc(ports, isNamed)) {
		add(pmaps.IdentityAny, resolvePorts(ports, destPods(dir, p, nil), warn))
		return
	}
	if all {
		// Egress to every peer on named ports: each is the destination's,
		// so every pod identity gets the ports its pods name (and the
		// world none of them); numeric ports stay for every peer.
		if numeric := slices.DeleteFunc(slices.Clone(ports), isNamed); len(numeric) > 0 {
			add(pmaps.IdentityAny, resolvePorts(numeric, nil, warn))
		}
		named := slices.DeleteFunc(slices.Clone(ports), func(pp networkingv1.NetworkPolicyPort) bool { return !isNamed(pp) })
		quiet := func(string, ...any) {}
		found := false
		for _, id := range index.all {
			prs := resolvePorts(named, id.pods, quiet)
			found = found || len(prs) > 0
			add(id.id, prs)
		}
		if !found {
			for _, pp := range named {
				warn("named port %q: no pod has it", pp.Port.StrVal)
			}
		}
		return
	}
	for _, id := range peerIDs {
		add(id.id, resolvePorts(ports, destPods(dir, p, id.pods), warn))
	}
	for _, id := range cidrIDs {
		add(id, resolvePorts(ports, destPods(dir, p, cidrPods), warn))
	}
}

// isNamed says whether a policy port is a named one.
func isNamed(pp networkingv1.NetworkPolicyPort) bool {
	return pp.Port != nil && pp.Port.Type == intstr.String
}

// destPods are the pods whose named ports a rule's ports name.
func destPods(dir uint8, p *Pod, peers []*Pod) []*Pod {
	if dir == pmaps.PolicyIngress {
		return []*Pod{p}
	}
	return peers
}

type portRange struct {
	proto       uint8
	first, last uint16
}

func protoNumber(p *corev1.Protocol) (uint8, bool) {
	if p == nil {
		return 6, true
	}
	switch *p {
	case corev1.ProtocolTCP:
		return 6, true
	case corev1.ProtocolUDP:
		return 17, true
	case corev1.ProtocolSCTP:
		return 132, true
	}
	return 0, false
}

// resolvePorts turns a rule's ports into protocol and port ranges: none
// listed is every protocol and port; a named port is resolved on pods.
func resolvePorts(ports []networkingv1.NetworkPolicyPort, pods []*Pod, warn func(string, ...any)) []portRange {
	if len(ports) == 0 {
		return []portRange{{}}
	}
	var out []portRange
	for _, pp := range ports {
		proto, ok := protoNumber(pp.Protocol)
		if !ok {
			warn("protocol %s: not supported, left out", *pp.Protocol)
			continue
		}
		switch {
		case pp.Port == nil:
			out = append(out, portRange{proto: proto})
		case pp.Port.Type == 0: // a number
			first := uint16(pp.Port.IntVal)
			last := first
			if pp.EndPort != nil && *pp.EndPort >= pp.Port.IntVal {
				last = uint16(*pp.EndPort)
			}
			if first == 0 {
				continue
			}
			out = append(out, portRange{proto: proto, first: first, last: last})
		default: // a name
			found := false
			for _, pod := range pods {
				for _, np := range pod.Ports {
					if np.Name == pp.Port.StrVal && np.Proto == proto {
						out = append(out, portRange{proto: proto, first: np.Port, last: np.Port})
						found = true
					}
				}
			}
			if !found && len(pods) > 0 {
				warn("named port %q (%d): no selected pod has it", pp.Port.StrVal, proto)
			}
		}
	}
	return out
}
