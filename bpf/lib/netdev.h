/* What arrives from the network, on the uplink (from_netdev) or out of the
 * overlay (from_overlay): the same decisions for both. */
#pragma once

#include "common.h"
#include "parse.h"
#include "counters.h"
#include "flow.h"
#include "svc.h"
#include "snat.h"
#include "icmp.h"
#include "forward.h"
#include "frag.h"
#include "peer.h"

/* src_net is the network the packet's sender is a pod of, when the
 * overlay says so; 0 otherwise (lib/network.h). */
static __always_inline int netdev_ingress(struct __sk_buff *skb, enum hook hook, __u32 src_net)
{
	enum reason reason;
	struct frag_key first;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct flow4 f;
	int svc;

	trace_begin(skb);
	if (skb_linearize_headers(skb, ETH_HLEN) < 0)
		return verdict(skb, hook, REASON_TO_STACK, TC_ACT_OK);
	eth = header_at(skb, 0, struct ethhdr);
	if (!eth || eth->h_proto != bpf_htons(ETH_P_IP))
		return verdict(skb, hook, REASON_TO_STACK, TC_ACT_OK);

	reason = ipv4_check(skb);
	if (reason != REASON_UNSPEC)
		return verdict(skb, hook, reason, TC_ACT_SHOT);
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!ip)
		return verdict(skb, hook, REASON_DROP_TRUNCATED, TC_ACT_SHOT);
	if (flow4_parse(skb, ip, &f) < 0)
		return verdict(skb, hook, REASON_DROP_TRUNCATED, TC_ACT_SHOT);
	if (f.frag == FLOW_FRAG_LATER) {
		svc = frag4_translate(skb, &f, hook);
		if (svc == -2)
			return verdict(skb, hook, REASON_DROP_NAT_FAILED, TC_ACT_SHOT);
		return forward4(skb, svc < 0 ? SVC_UNTOUCHED : svc, hook, 0, 0, 0, src_net);
	}
	frag4_key(&first, &f, hook);
	switch (snat_ingress4(skb, &f)) {
	case 1:
		/* A masqueraded flow's reply: a pod's own flow, or a
		 * frontend's towards a backend elsewhere, whose reply now
		 * needs the frontend back as its source. */
		svc = SVC_UNTOUCHED;
		if (f.has_ports) {
			svc = service_translate(skb, &f, SVC_SCOPE_EXTERNAL, 1, 0, &reason);
			if (svc == SVC_DROP)
				return verdict(skb, hook, reason, TC_ACT_SHOT);
		}
		if (f.frag)
			frag4_record(&first, &f, svc);
		return forward4(skb, svc, hook, 0, 0, 0, src_net);
	case -1:
		return verdict(skb, hook, REASON_DROP_NAT_FAILED, TC_ACT_SHOT);
	}
	if (f.icmp == FLOW_ICMP_ERROR) {
		svc = svc_icmp_error4(skb, &f);
		if (svc == SVC_DROP)
			return verdict(skb, hook, REASON_DROP_NAT_FAILED, TC_ACT_SHOT);
		return forward4(skb, svc, hook, 0, 0, 0, src_net);
	}
	if (!f.has_ports)
		return forward4(skb, SVC_UNTOUCHED, hook, 0, 0, 0, src_net);

	svc = service_translate(skb, &f, SVC_SCOPE_EXTERNAL, 0, 0, &reason);
	if (svc == SVC_DROP)
		return verdict(skb, hook, reason, TC_ACT_SHOT);
	if (f.frag && svc != SVC_UNTOUCHED)
		frag4_record(&first, &f, svc);
	if (svc == SVC_REJECT) {
		if (icmp4_unreach_reply(skb, f.daddr) < 0)
			return verdict(skb, hook, REASON_DROP_REJECT_FAILED, TC_ACT_SHOT);
		account(skb, REASON_SVC_REJECT, hook);
		return redirect_egress(skb->ingress_ifindex);
	}
	return forward4(skb, svc, hook, 0, 0, 0, src_net);
}
