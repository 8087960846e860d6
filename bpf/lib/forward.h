/* Delivering a packet once its addresses are final. */
#pragma once

#include "common.h"
#include "parse.h"
#include "csum.h"
#include "endpoints.h"
#include "counters.h"
#include "fib.h"
#include "svc.h"
#include "peer.h"
#include "network.h"
#include "policy.h"

/* forward4 delivers a (possibly translated) packet: into a local pod, on
 * to another node's pod or address (peer.h), out by the FIB for a
 * translated reply, or to the stack. hook says who is asking, for the
 * counters. The caller may have looked the destination up already (known:
 * dst is the result, possibly none); a rewritten destination is looked up
 * here. src is the sending pod when it is one of this node's (from_pod),
 * whose egress policy applies; src_net is its network (or the one the
 * overlay says the sender is of), 0 for none: a local pod of a network
 * src_net does not reach gets nothing, whatever address (a service's) the
 * packet was sent to. A service's reply passes both pods' policies: its
 * request passed them (lib/policy.h). */
static __always_inline int forward4(struct __sk_buff *skb, int svc, enum hook hook,
				    int known, struct endpoint_info *dst,
				    const struct endpoint_info *src, __u32 src_net)
{
	enum reason reason = REASON_TO_STACK;
	struct peer *peer = 0;
	struct ethhdr *eth;
	struct iphdr *ip;
	int ok, ret;

	if (src && src->flags && svc != SVC_REPLY &&
	    policy_denies4(skb, POLICY_EGRESS, src->flags))
		return verdict(skb, hook, REASON_DROP_POLICY_EGRESS, TC_ACT_SHOT);
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!ip)
		return verdict(skb, hook, REASON_DROP_TRUNCATED, TC_ACT_SHOT);

	if (!known || svc == SVC_FORWARD || svc == SVC_REPLY)
		dst = endpoint_lookup4(ip->daddr);
	if (dst) {
		if (!network_allows(src_net, dst->network))
			return verdict(skb, hook, REASON_DROP_NETWORK_ISOLATED, TC_ACT_SHOT);
		if (dst->flags && svc != SVC_REPLY &&
		    policy_denies4(skb, POLICY_INGRESS, dst->flags))
			return verdict(skb, hook, REASON_DROP_POLICY_INGRESS, TC_ACT_SHOT);
	} else {
		peer = peer_lookup4(ip->daddr);
		if (!peer && svc != SVC_REPLY)
			return verdict(skb, hook, REASON_TO_STACK, TC_ACT_OK);
	}
	/* The policy's lookups may have pulled the headers in: fetched anew. */
	eth = header_at(skb, 0, struct ethhdr);
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!eth || !ip)
		return verdict(skb, hook, REASON_DROP_TRUNCATED, TC_ACT_SHOT);

	/* Routed one hop, like the node would: TTL down, gateway MAC as source. */
	if (ip->ttl <= 1)
		return verdict(skb, hook, REASON_DROP_TTL_EXCEEDED, TC_ACT_SHOT);
	if (peer) {
		__u32 bytes = skb->len;

		trace_note(TRACE_PEER, peer->node_addr[0], peer->flags, 0);
		ret = forward_peer4(skb, eth, ip, peer, &reason);
		if (ret == FORWARD_PEER_TUNNEL_FAILED)
			return verdict(skb, hook, REASON_DROP_TUNNEL_FAILED, TC_ACT_SHOT);
		account_bytes(skb, reason, hook, bytes);
		if (ret == TC_ACT_REDIRECT && hook == HOOK_FROM_POD)
			skb->mark = MARK_PEER_FORWARDED;
		return ret;
	}
	ipv4_decrease_ttl(ip);
	if (dst) {
		mac_copy(eth->h_dest, dst->mac);
		mac_copy(eth->h_source, dst->node_mac);
		account(skb, REASON_FORWARD_LOCAL, hook);
		return redirect_peer(dst->ifindex);
	}
	/* A reply whose source is now a node address (NodePort): the stack
	 * would drop it as a martian, so route it ourselves. */
	ret = fib_redirect4(skb, ip->saddr, ip->daddr, &ok);
	return verdict(skb, hook, ok ? REASON_FORWARD_FIB : REASON_DROP_FIB_FAILED, ret);
}

