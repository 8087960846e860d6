// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* to_pod: tc egress on a pod's host-side veth, i.e. every packet the node's
 * stack routes into a pod: the node's own traffic to the pod, and replies
 * of services whose backend is the node itself (the API server behind the
 * `kubernetes` Service, hostNetwork pods). Packets from_pod and from_netdev
 * deliver with bpf_redirect_peer never pass here. Decides, in order:
 *   1. malformed IPv4 (short headers, bad IP header, L4 header cut short)
 *      is dropped with a reason; ARP and other non-IPv4 frames pass;
 *   2. a reply of a translated service flow (conntrack's reply entry, as
 *      from_pod looks it up) gets its frontend address and port back as
 *      source: from_pod sent the request to a node address, which the
 *      stack delivered locally and answers from there;
 *   3. an ICMP error about a service flow (the node could not deliver the
 *      request to a backend, or a node-address backend refuses it) gets the
 *      frontend back in its quote;
 *   4. the later fragments of a translated reply get what its first
 *      fragment got;
 *   5. everything else passes untouched, unless the pod's ingress policy
 *      does not allow it (lib/policy.h): the node's own packets always
 *      do, what the stack forwards from elsewhere is looked up.
 * The stack routed these packets already: no TTL or MAC is changed here. */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/counters.h"
#include "lib/flow.h"
#include "lib/svc.h"
#include "lib/frag.h"
#include "lib/endpoints.h"
#include "lib/policy.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline int drop(struct __sk_buff *skb, enum reason reason)
{
	return verdict(skb, HOOK_TO_POD, reason, TC_ACT_SHOT);
}

static __always_inline int pass(struct __sk_buff *skb)
{
	return verdict(skb, HOOK_TO_POD, REASON_PASS, TC_ACT_OK);
}

/* deliver passes a packet the stack routed to the pod at daddr, as its
 * policy says. */
static __always_inline int deliver(struct __sk_buff *skb, __be32 daddr)
{
	struct endpoint_info *ep = endpoint_lookup4(daddr);

	if (ep && ep->flags &&
	    policy_denies4(skb, POLICY_INGRESS, ep->flags))
		return drop(skb, REASON_DROP_POLICY_INGRESS);
	return pass(skb);
}

SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	enum reason reason;
	struct frag_key first;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct flow4 f;

	trace_begin(skb);
	if (skb_linearize_headers(skb, ETH_HLEN) < 0)
		return drop(skb, REASON_DROP_TRUNCATED);
	eth = header_at(skb, 0, struct ethhdr);
	if (!eth)
		return drop(skb, REASON_DROP_TRUNCATED);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return pass(skb);

	reason = ipv4_check(skb);
	if (reason != REASON_UNSPEC)
		return drop(skb, reason);
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!ip || flow4_parse(skb, ip, &f) < 0)
		return drop(skb, REASON_DROP_TRUNCATED);
	if (f.frag == FLOW_FRAG_LATER) {
		/* Not recorded: the node's own traffic, never translated. */
		switch (frag4_translate(skb, &f, HOOK_TO_POD)) {
		case SVC_REPLY:
			return verdict(skb, HOOK_TO_POD, REASON_SVC_REPLY, TC_ACT_OK);
		case -2:
			return drop(skb, REASON_DROP_NAT_FAILED);
		}
		return deliver(skb, f.daddr);
	}
	if (f.icmp == FLOW_ICMP_ERROR) {
		switch (svc_icmp_error4(skb, &f)) {
		case SVC_REPLY:
			return verdict(skb, HOOK_TO_POD, REASON_SVC_REPLY, TC_ACT_OK);
		case SVC_DROP:
			return drop(skb, REASON_DROP_NAT_FAILED);
		}
		return deliver(skb, f.daddr);
	}
	if (!f.has_ports)
		return deliver(skb, f.daddr);

	/* The destination is this veth's pod, so only the reply lookup is
	 * done: the same as from_pod's for a packet to a local pod. */
	frag4_key(&first, &f, HOOK_TO_POD);
	switch (service_translate(skb, &f, SVC_SCOPE_INTERNAL, 1, 0, &reason)) {
	case SVC_REPLY:
		if (f.frag)
			frag4_record(&first, &f, SVC_REPLY);
		return verdict(skb, HOOK_TO_POD, REASON_SVC_REPLY, TC_ACT_OK);
	case SVC_DROP:
		return drop(skb, reason);
	}
	return deliver(skb, f.daddr);
}
