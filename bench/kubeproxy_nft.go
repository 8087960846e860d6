package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// kube-proxy's nftables mode, as its proxier writes the table: one
// `nft -f -` transaction per sync, in the command syntax of the knftables
// library it uses (add, flush, delete; one object a line). The generator
// below writes a full sync, the first one of a kube-proxy that starts on a
// node, for ClusterIP services on one TCP port each, with kube-proxy's
// defaults otherwise: --cluster-cidr as the local-traffic detector, the
// masquerade bit 14, NodePorts on the node's primary address.
//
// Unlike the iptables mode, nothing here is a linear walk: a ClusterIP
// packet meets the services chain's verdict-map lookup (address, protocol,
// port) and its service chain's one DNAT rule, wherever the service is in
// the table.

// The kube-proxy table's fixed names (pkg/proxy/nftables in Kubernetes).
const (
	kpnTable    = "ip kube-proxy"
	kpnMasqMark = "0x004000" // fmt "%#08x" of 1<<14, as the proxier formats it
)

// kpnBaseChains are the proxier's base chains: name, type, hook, priority
// (knftables writes dstnat-10 as -110, dstnat as -100, srcnat as 100).
var kpnBaseChains = [][4]string{
	{"filter-prerouting-pre-dnat", "filter", "prerouting", "-110"},
	{"filter-output-pre-dnat", "filter", "output", "-110"},
	{"filter-input", "filter", "input", "0"},
	{"filter-forward", "filter", "forward", "0"},
	{"filter-output", "filter", "output", "0"},
	{"nat-prerouting", "nat", "prerouting", "-100"},
	{"nat-output", "nat", "output", "-100"},
	{"nat-postrouting", "nat", "postrouting", "100"},
}

// kpnJumps are the jumps from the base chains: to, from, match.
var kpnJumps = [][3]string{
	{"nodeport-endpoints-check", "filter-input", "ct state new"},
	{"service-endpoints-check", "filter-input", "ct state new"},
	{"service-endpoints-check", "filter-forward", "ct state new"},
	{"service-endpoints-check", "filter-output", "ct state new"},
	{"firewall-check", "filter-prerouting-pre-dnat", "ct state new"},
	{"firewall-check", "filter-output-pre-dnat", "ct state new"},
	{"services", "nat-output", ""},
	{"services", "nat-prerouting", ""},
	{"masquerading", "nat-postrouting", ""},
	{"cluster-ips-check", "filter-forward", "ct state new"},
	{"cluster-ips-check", "filter-output", "ct state new"},
}

// kpnLocalhostRejectProtocols are the protocols whose localhost-NodePort
// reject chains and counters a sync removes while the
// KubeProxyNFTablesLocalhostNodePorts feature is off (the default).
var kpnLocalhostRejectProtocols = []string{"tcp", "udp", "sctp"}

// kpnHashName is the proxier's hashAndTruncate: the first 8 characters of
// the base32 SHA-256 of name, a dash, then name (never truncated here:
// the names are far below nftables' limit).
func kpnHashName(name string) string { return kpHash(name)[:8] + "-" + name }

// nftChain is the service port's cluster-policy chain,
// service-HASH-namespace/name/tcp/portname.
func (s kpService) nftChain() string {
	return "service-" + kpnHashName(s.namespace+"/"+s.name+"/tcp/"+s.portLabel)
}

// kpnNode is what a kube-proxy node contributes to its table: the node's
// name (an endpoint on it is local, so its hairpin connections are
// masqueraded), its primary address (NodePorts), the cluster CIDR and
// the service CIDRs of the cluster's ServiceCIDR objects.
type kpnNode struct {
	name         string
	address      netip.Addr
	clusterCIDR  netip.Prefix
	serviceCIDRs []netip.Prefix
}

// kubeProxyNFTRules is the transaction of a kube-proxy starting on node
// with svcs: the input of `nft -f -`. localEndpoints says which endpoints
// are pods of the node (their hairpin connections are masqueraded).
func kubeProxyNFTRules(svcs []kpService, node kpnNode, local func(netip.Addr) bool) string {
	var b strings.Builder
	b.Grow(4096 + len(svcs)*400)
	add := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	chain := func(name string) {
		add("add chain %s %s", kpnTable, name)
		add("flush chain %s %s", kpnTable, name)
	}
	rule := func(chain, r string) { add("add rule %s %s %s", kpnTable, chain, r) }

	add(`add table %s { comment "rules for kube-proxy" ; }`, kpnTable)
	// The first sync deletes the base chains, so that their properties
	// can change, and makes them again.
	for _, c := range kpnBaseChains {
		add("add chain %s %s", kpnTable, c[0])
		add("delete chain %s %s", kpnTable, c[0])
	}
	for _, c := range kpnBaseChains {
		add("add chain %s %s { type %s hook %s priority %s ; }", kpnTable, c[0], c[1], c[2], c[3])
		add("flush chain %s %s", kpnTable, c[0])
	}
	made := map[string]bool{}
	ensure := func(name string) {
		if !made[name] {
			made[name] = true
			chain(name)
		}
	}
	for _, j := range kpnJumps {
		ensure(j[0])
		r := "jump " + j[0]
		if j[2] != "" {
			r = j[2] + " " + r
		}
		rule(j[1], r)
	}
	for _, c := range []string{"services", "cluster-ips-check", "masquerading"} {
		ensure(c)
	}
	add(`add set %s hairpin-connections { type ipv4_addr . ipv4_addr . inet_proto . inet_service ; comment "service hairpin connections" ; }`, kpnTable)
	rule("masquerading", "mark and "+kpnMasqMark+" != 0 mark set mark xor "+kpnMasqMark+" masquerade fully-random")
	rule("masquerading", "ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random")
	add(`add set %s cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }`, kpnTable)
	rule("cluster-ips-check", `ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"`)
	if len(node.serviceCIDRs) > 0 {
		cidrs := make([]string, len(node.serviceCIDRs))
		for i, p := range node.serviceCIDRs {
			cidrs[i] = p.String()
		}
		rule("cluster-ips-check", `ip daddr { `+strings.Join(cidrs, ",")+` } drop comment "Drop traffic to unallocated ClusterIPs"`)
	}
	add(`add set %s nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }`, kpnTable)
	add("flush set %s nodeport-ips", kpnTable)
	add("add element %s nodeport-ips { %s }", kpnTable, node.address)
	add(`add map %s no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }`, kpnTable)
	add(`add map %s no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }`, kpnTable)
	add(`add chain %s reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }`, kpnTable)
	add("flush chain %s reject-chain", kpnTable)
	rule("reject-chain", "reject")
	rule("service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services")
	rule("nodeport-endpoints-check", "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports")
	add(`add map %s localhost-nodeport-reject-ports { type inet_proto . inet_service : verdict ; comment "localhost NodePorts rejected by kube-proxy" ; }`, kpnTable)
	add("delete map %s localhost-nodeport-reject-ports", kpnTable)
	for _, p := range kpnLocalhostRejectProtocols {
		add("add chain %s localhost-nodeport-reject-%s", kpnTable, p)
		add("delete chain %s localhost-nodeport-reject-%s", kpnTable, p)
		add("add counter %s localhost-nodeport-rejected-%s", kpnTable, p)
		add("delete counter %s localhost-nodeport-rejected-%s", kpnTable, p)
	}
	add(`add map %s firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }`, kpnTable)
	ensure("firewall-check")
	rule("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips")
	add(`add map %s service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }`, kpnTable)
	add(`add map %s service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }`, kpnTable)
	rule("services", "ip daddr @cluster-ips ip saddr != "+node.clusterCIDR.String()+" mark set mark or "+kpnMasqMark+
		` comment "masquerade clusterIP traffic from outside cluster"`)
	rule("services", "ip daddr . meta l4proto . th dport vmap @service-ips")
	rule("services", "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")

	for _, s := range svcs {
		port := strconv.Itoa(s.port)
		svcChain := s.nftChain()
		for _, ep := range s.endpoints {
			if local(ep) {
				add("add element %s hairpin-connections { %s . %s . tcp . %d }", kpnTable, ep, ep, s.targetPort)
			}
		}
		chain(svcChain)
		add("add element %s cluster-ips { %s }", kpnTable, s.clusterIP)
		add("add element %s service-ips { %s . tcp . %s : goto %s }", kpnTable, s.clusterIP, port, svcChain)
		if len(s.endpoints) == 1 {
			rule(svcChain, "meta l4proto tcp dnat to "+s.endpoint(s.endpoints[0]))
			continue
		}
		var m strings.Builder
		for i, ep := range s.endpoints {
			if i > 0 {
				m.WriteString(" , ")
			}
			fmt.Fprintf(&m, "%d : %s . %d", i, ep, s.targetPort)
		}
		rule(svcChain, fmt.Sprintf("meta l4proto tcp dnat ip addr . port to numgen random mod %d map { %s }", len(s.endpoints), m.String()))
	}
	return b.String()
}
