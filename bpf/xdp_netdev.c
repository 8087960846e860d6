// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdp_netdev: XDP on the node's uplink, the earliest point a packet from the
 * network can be seen. It drops frames too short for the headers they claim
 * and IPv4 headers that cannot be valid (counted, before the stack allocates
 * an skb for them) and passes everything
 * else on to the stack. Service and NAT fast paths will hang off this hook. */
#include "lib/common.h"
#include "lib/counters.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int xdp_netdev(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end) {
		count(REASON_DROP_TRUNCATED, HOOK_XDP, len);
		return XDP_DROP;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end) {
			count(REASON_DROP_TRUNCATED, HOOK_XDP, len);
			return XDP_DROP;
		}
		if (ip->version != 4 || ip->ihl < 5 ||
		    bpf_ntohs(ip->tot_len) < ip->ihl * 4) {
			count(REASON_DROP_BAD_IP_HEADER, HOOK_XDP, len);
			return XDP_DROP;
		}
		if (sizeof(*eth) + bpf_ntohs(ip->tot_len) > len) {
			count(REASON_DROP_TRUNCATED, HOOK_XDP, len);
			return XDP_DROP;
		}
	}
	count(REASON_TO_STACK, HOOK_XDP, len);
	return XDP_PASS;
}
