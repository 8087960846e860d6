// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* to_netdev: tc egress on the node's uplink, i.e. every packet leaving the
 * node for the network. Decides:
 *   0. a pod's packet from_pod sent on to another node (marked, lib/peer.h)
 *      and the node's own VXLAN packets pass at once: nothing in them is
 *      to be translated (peers are never masqueraded);
 *   1. a pod's TCP, UDP or ICMP echo to a destination outside the cluster
 *      (not in the nonmasq ranges) leaves with the node's address and a port
 *      allocated without collisions (lib/snat.h); when no port or no map
 *      room is left, the new flow is dropped with a reason; so does a
 *      frontend's packet to a backend on another node (NodePort and the
 *      like, externalTrafficPolicy Cluster);
 *   2. the later fragments of such a datagram get what its first fragment
 *      got; when that one was not seen and the datagram would have been
 *      masqueraded, a pod's are dropped rather than leak its address;
 *   3. an ICMP error the node's stack sends about a service flow it
 *      routed (a frontend's packet translated to a backend on another node
 *      but too large for the overlay: fragmentation needed) quotes the
 *      packet as translated; it leaves quoting what the client sent, the
 *      frontend, so the client's kernel finds its own flow in it (lib/svc.h);
 *   4. everything else (the node's own traffic, traffic to the cluster's
 *      ranges, other protocols) leaves untouched.
 * Replies are translated back by from_netdev. */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/counters.h"
#include "lib/flow.h"
#include "lib/snat.h"
#include "lib/svc.h"
#include "lib/frag.h"
#include "lib/peer.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int to_netdev(struct __sk_buff *skb)
{
	enum reason reason = REASON_UNSPEC;
	struct frag_key first;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct nat_config *cfg;
	struct flow4 f;
	int ret, masq;

	trace_begin(skb);
	if (peer_forwarded(skb))
		return verdict(skb, HOOK_TO_NETDEV, REASON_PASS, TC_ACT_OK);
	if (skb_linearize_headers(skb, ETH_HLEN) < 0)
		return verdict(skb, HOOK_TO_NETDEV, REASON_TO_STACK, TC_ACT_OK);
	eth = header_at(skb, 0, struct ethhdr);
	if (!eth || eth->h_proto != bpf_htons(ETH_P_IP))
		return verdict(skb, HOOK_TO_NETDEV, REASON_TO_STACK, TC_ACT_OK);
	/* The stack built or routed this packet: a bad header here is not
	 * ours to judge, only not ours to translate. */
	if (ipv4_check(skb) != REASON_UNSPEC)
		return verdict(skb, HOOK_TO_NETDEV, REASON_TO_STACK, TC_ACT_OK);
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!ip || flow4_parse(skb, ip, &f) < 0)
		return verdict(skb, HOOK_TO_NETDEV, REASON_TO_STACK, TC_ACT_OK);

	cfg = nat_config4();
	if (cfg && overlay_outer4(&f, cfg->addr[0]))
		return verdict(skb, HOOK_TO_NETDEV, REASON_PASS, TC_ACT_OK);
	masq = snat_candidate4(&f);
	if (f.frag == FLOW_FRAG_LATER) {
		ret = frag4_translate(skb, &f, HOOK_TO_NETDEV);
		if (ret == -2 || (ret == FRAG_UNKNOWN && masq))
			return verdict(skb, HOOK_TO_NETDEV, ret == -2 ? REASON_DROP_NAT_FAILED : REASON_DROP_FRAG_UNKNOWN,
				       TC_ACT_SHOT);
		return verdict(skb, HOOK_TO_NETDEV, ret == SVC_FORWARD ? REASON_SNAT : REASON_TO_STACK, TC_ACT_OK);
	}
	if (f.icmp == FLOW_ICMP_ERROR) {
		ret = svc_icmp_error4(skb, &f);
		if (ret == SVC_DROP)
			return verdict(skb, HOOK_TO_NETDEV, REASON_DROP_NAT_FAILED, TC_ACT_SHOT);
		if (ret != SVC_UNTOUCHED)
			return verdict(skb, HOOK_TO_NETDEV, REASON_SVC_REPLY, TC_ACT_OK);
	}
	frag4_key(&first, &f, HOOK_TO_NETDEV);
	ret = snat_egress4(skb, &f, &reason);
	if (ret < 0)
		return verdict(skb, HOOK_TO_NETDEV, reason, TC_ACT_SHOT);
	/* ret without masq: a frontend's flow, masqueraded as well. */
	if (f.frag && (masq || ret))
		frag4_record(&first, &f, ret ? SVC_FORWARD : SVC_UNTOUCHED);
	return verdict(skb, HOOK_TO_NETDEV, ret ? REASON_SNAT : REASON_TO_STACK, TC_ACT_OK);
}
