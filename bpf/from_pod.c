// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_pod: tc ingress on a pod's host-side veth, i.e. every packet a pod
 * sends. Decides, in order:
 *   1. malformed or non-IPv4/ARP frames are dropped with a reason;
 *   2. the source must be the endpoint that owns this veth (IP and MAC),
 *      otherwise the packet is a spoof and is dropped;
 *   3. a reply of a translated service flow gets its frontend address back
 *      as source; a packet to a service frontend gets a backend (conntrack
 *      keeps the choice for the flow) as destination, or, when the service
 *      has no backend, is answered with ICMP port unreachable; an ICMP
 *      error about a service flow gets the addresses its receiver knows;
 *      the later fragments of a datagram get what its first one got, and
 *      are dropped when that one was not seen;
 *   4. a destination that is a pod on this node is routed straight into that
 *      pod's namespace (TTL decremented, MACs rewritten, bpf_redirect_peer),
 *      never touching a bridge or the host's routing, unless the two pods'
 *      networks do not reach each other (lib/network.h: dropped); a
 *      translated reply to elsewhere is routed out by FIB lookup;
 *   5. everything else goes to the host stack. */
#define OVERLAY_ENCAP_SELF 1	/* lib/peer.h: a pod's VXLAN packet is encapsulated here */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/endpoints.h"
#include "lib/counters.h"
#include "lib/flow.h"
#include "lib/svc.h"
#include "lib/icmp.h"
#include "lib/forward.h"
#include "lib/frag.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline int drop(struct __sk_buff *skb, enum reason reason)
{
	return verdict(skb, HOOK_FROM_POD, reason, TC_ACT_SHOT);
}

static __always_inline int from_pod_arp(struct __sk_buff *skb)
{
	struct endpoint_info *ep;
	struct ethhdr *eth;
	struct arp_ipv4 *arp;

	if (skb_linearize_headers(skb, ETH_HLEN + sizeof(*arp)) < 0)
		return drop(skb, REASON_DROP_TRUNCATED);
	eth = header_at(skb, 0, struct ethhdr);
	arp = header_at(skb, ETH_HLEN, struct arp_ipv4);
	if (!eth || !arp)
		return drop(skb, REASON_DROP_TRUNCATED);
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) ||
	    arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != 6 || arp->ar_pln != 4)
		return drop(skb, REASON_DROP_UNSUPPORTED_L3);

	/* An ARP reply naming another pod's IP would poison the node's
	 * neighbour table: the sender must be this veth's endpoint. */
	ep = endpoint_lookup4(arp->sip);
	if (!ep || !endpoint_owns(ep, skb->ingress_ifindex, arp->sha) ||
	    !mac_equal(eth->h_source, arp->sha))
		return drop(skb, REASON_DROP_SPOOFED_ARP);
	return verdict(skb, HOOK_FROM_POD, REASON_ARP_TO_STACK, TC_ACT_OK);
}

/* A pod's stack sends a datagram's first fragment first: a later one with
 * nothing recorded cannot be translated, whatever it was meant for. */
static __always_inline int from_pod_later_fragment(struct __sk_buff *skb, struct flow4 *f,
						   const struct endpoint_info *src)
{
	int svc = frag4_translate(skb, f, HOOK_FROM_POD);

	if (svc == FRAG_UNKNOWN)
		return drop(skb, REASON_DROP_FRAG_UNKNOWN);
	if (svc < 0)
		return drop(skb, REASON_DROP_NAT_FAILED);
	if (svc == SVC_REJECT)
		return drop(skb, REASON_DROP_NO_BACKEND);
	return forward4(skb, svc, HOOK_FROM_POD, 0, 0, src, src->network);
}

static __always_inline int from_pod_ipv4(struct __sk_buff *skb)
{
	enum reason reason = ipv4_check(skb);
	struct endpoint_info *src, *dst = 0;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct frag_key first;
	struct flow4 f;
	int svc = SVC_UNTOUCHED;

	if (reason != REASON_UNSPEC)
		return drop(skb, reason);
	eth = header_at(skb, 0, struct ethhdr);
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!eth || !ip)
		return drop(skb, REASON_DROP_TRUNCATED);

	src = endpoint_lookup4(ip->saddr);
	if (!src || src->ifindex != skb->ingress_ifindex)
		return drop(skb, REASON_DROP_SPOOFED_IP);
	if (!mac_equal(src->mac, eth->h_source))
		return drop(skb, REASON_DROP_SPOOFED_MAC);

	if (flow4_parse(skb, ip, &f) < 0)
		return drop(skb, REASON_DROP_TRUNCATED);
	if (f.frag == FLOW_FRAG_LATER)
		return from_pod_later_fragment(skb, &f, src);
	if (f.icmp == FLOW_ICMP_ERROR) {
		svc = svc_icmp_error4(skb, &f);
		if (svc == SVC_DROP)
			return drop(skb, REASON_DROP_NAT_FAILED);
		return forward4(skb, svc, HOOK_FROM_POD, 0, 0, src, src->network);
	}
	frag4_key(&first, &f, HOOK_FROM_POD);
	if (f.has_ports) {
		/* Looks the destination up, unless conntrack knows the flow. */
		svc = service_translate(skb, &f, SVC_SCOPE_INTERNAL, 0, &dst, &reason);
		if (svc == SVC_DROP)
			return drop(skb, reason);
		if (f.frag)
			frag4_record(&first, &f, svc);
		if (svc == SVC_REJECT) {
			if (icmp4_unreach_reply(skb, f.daddr) < 0)
				return drop(skb, REASON_DROP_REJECT_FAILED);
			account(skb, REASON_SVC_REJECT, HOOK_FROM_POD);
			return redirect_peer(skb->ingress_ifindex);
		}
	} else {
		dst = endpoint_lookup4(f.daddr);
		if (f.frag)
			frag4_record(&first, &f, svc);
	}
	return forward4(skb, svc, HOOK_FROM_POD, 1, dst, src, src->network);
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	struct ethhdr *eth;

	trace_begin(skb);
	if (skb_linearize_headers(skb, ETH_HLEN) < 0)
		return drop(skb, REASON_DROP_TRUNCATED);
	eth = header_at(skb, 0, struct ethhdr);
	if (!eth)
		return drop(skb, REASON_DROP_TRUNCATED);

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return from_pod_ipv4(skb);
	case bpf_htons(ETH_P_ARP):
		return from_pod_arp(skb);
	default:
		return drop(skb, REASON_DROP_UNSUPPORTED_L3);
	}
}
