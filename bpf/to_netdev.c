// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* to_netdev: tc egress on the node's uplink, i.e. every packet leaving the
 * node for the network. Decides:
 *   1. a pod's TCP, UDP or ICMP echo to a destination outside the cluster
 *      (not in the nonmasq ranges) leaves with the node's address and a port
 *      allocated without collisions (lib/snat.h); when no port or no map
 *      room is left, the new flow is dropped with a reason;
 *   2. everything else (the node's own traffic, traffic to the cluster's
 *      ranges, other protocols) leaves untouched.
 * Replies are translated back by from_netdev. */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/counters.h"
#include "lib/flow.h"
#include "lib/snat.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int to_netdev(struct __sk_buff *skb)
{
	enum reason reason = REASON_UNSPEC;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct flow4 f;
	int ret;

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

	ret = snat_egress4(skb, &f, &reason);
	if (ret < 0)
		return verdict(skb, HOOK_TO_NETDEV, reason, TC_ACT_SHOT);
	return verdict(skb, HOOK_TO_NETDEV, ret ? REASON_SNAT : REASON_TO_STACK, TC_ACT_OK);
}
