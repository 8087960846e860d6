// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_netdev: tc ingress on the node's uplink, i.e. every packet that
 * arrives from the network. Decides, in order:
 *   1. non-IPv4 traffic (ARP, IPv6) and anything not for a service or a pod
 *      goes to the host stack untouched: the node stays reachable;
 *   2. malformed IPv4 headers are dropped with a reason;
 *   3. a reply to a pod's masqueraded flow (to_netdev), or an ICMP error
 *      about one, gets the pod's address and port back;
 *   4. a packet to an externally reachable frontend (NodePort, externalIP,
 *      LoadBalancer IP, hostPort) gets a backend (conntrack keeps the choice
 *      for the flow) as destination; with no backend it is answered with
 *      ICMP port unreachable, as kube-proxy's REJECT does;
 *   5. an ICMP error about a service flow gets the addresses its receiver
 *      knows; the later fragments of a datagram translated here get what
 *      its first fragment got (others, the node's own included, pass as
 *      they are);
 *   6. a destination that is a pod on this node is delivered straight into
 *      the pod's namespace with bpf_redirect_peer; the rest goes to the stack.
 * Replies of these flows leave through from_pod, which restores the
 * frontend as their source. */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/counters.h"
#include "lib/flow.h"
#include "lib/svc.h"
#include "lib/snat.h"
#include "lib/icmp.h"
#include "lib/forward.h"
#include "lib/frag.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline int drop(struct __sk_buff *skb, enum reason reason)
{
	return verdict(skb, HOOK_FROM_NETDEV, reason, TC_ACT_SHOT);
}

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	enum reason reason;
	struct frag_key first;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct flow4 f;
	int svc;

	if (skb_linearize_headers(skb, ETH_HLEN) < 0)
		return verdict(skb, HOOK_FROM_NETDEV, REASON_TO_STACK, TC_ACT_OK);
	eth = header_at(skb, 0, struct ethhdr);
	if (!eth || eth->h_proto != bpf_htons(ETH_P_IP))
		return verdict(skb, HOOK_FROM_NETDEV, REASON_TO_STACK, TC_ACT_OK);

	reason = ipv4_check(skb);
	if (reason != REASON_UNSPEC)
		return drop(skb, reason);
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!ip)
		return drop(skb, REASON_DROP_TRUNCATED);
	if (flow4_parse(skb, ip, &f) < 0)
		return drop(skb, REASON_DROP_TRUNCATED);
	if (f.frag == FLOW_FRAG_LATER) {
		svc = frag4_translate(skb, &f, HOOK_FROM_NETDEV);
		if (svc == -2)
			return drop(skb, REASON_DROP_NAT_FAILED);
		return forward4(skb, svc < 0 ? SVC_UNTOUCHED : svc, HOOK_FROM_NETDEV, 0, 0);
	}
	frag4_key(&first, &f, HOOK_FROM_NETDEV);
	switch (snat_ingress4(skb, &f)) {
	case 1:
		if (f.frag)
			frag4_record(&first, &f, SVC_UNTOUCHED);
		return forward4(skb, SVC_UNTOUCHED, HOOK_FROM_NETDEV, 0, 0);
	case -1:
		return drop(skb, REASON_DROP_NAT_FAILED);
	}
	if (f.icmp == FLOW_ICMP_ERROR) {
		svc = svc_icmp_error4(skb, &f);
		if (svc == SVC_DROP)
			return drop(skb, REASON_DROP_NAT_FAILED);
		return forward4(skb, svc, HOOK_FROM_NETDEV, 0, 0);
	}
	if (!f.has_ports)
		return forward4(skb, SVC_UNTOUCHED, HOOK_FROM_NETDEV, 0, 0);

	svc = service_translate(skb, &f, SVC_SCOPE_EXTERNAL, 0, &reason);
	if (svc == SVC_DROP)
		return drop(skb, reason);
	if (f.frag && svc != SVC_UNTOUCHED)
		frag4_record(&first, &f, svc);
	if (svc == SVC_REJECT) {
		if (icmp4_unreach_reply(skb, f.daddr) < 0)
			return drop(skb, REASON_DROP_NO_BACKEND);
		count(REASON_SVC_REJECT, HOOK_FROM_NETDEV, skb->len);
		return bpf_redirect(skb->ingress_ifindex, 0);
	}
	return forward4(skb, svc, HOOK_FROM_NETDEV, 0, 0);
}
