// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* to_overlay: tc egress on the node's VXLAN device (external mode), i.e.
 * every packet about to be encapsulated. Decides, in order:
 *   1. a frontend's packet to a backend on another node (NodePort and the
 *      like, externalTrafficPolicy Cluster) leaves with the node's address
 *      and a port of its own (lib/snat.h), as it would through the uplink,
 *      and the later fragments of its datagram with what the first got;
 *   2. pods' packets that from_pod did not encapsulate itself (GSO ones,
 *      a node whose neighbour is not resolved yet, kernels before 5.11)
 *      arrive with their tunnel key already set (lib/peer.h) and pass,
 *      at once when from_pod marked them;
 *   3. the node's own packets, routed here by the kernel routes podpath
 *      keeps for other nodes' pod CIDRs, get their key here from the same
 *      peers map (and a pod's packet the stack routed here, too large for
 *      from_pod to send, its network as VNI): without one the device would
 *      drop them. Anything not for a known node is dropped. */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/counters.h"
#include "lib/flow.h"
#include "lib/snat.h"
#include "lib/frag.h"
#include "lib/peer.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int to_overlay(struct __sk_buff *skb)
{
	enum reason reason = REASON_UNSPEC;
	struct bpf_tunnel_key key = {};
	struct frag_key first;
	struct nat_config *cfg;
	struct iphdr *ip;
	struct flow4 f;
	struct peer *p;
	int keyed, masq = 0;

	trace_begin(skb);
	if (peer_forwarded(skb))
		return verdict(skb, HOOK_TO_OVERLAY, REASON_PASS, TC_ACT_OK);
	keyed = tunnel_key_get(skb, &key, __builtin_offsetof(struct bpf_tunnel_key, local_ipv4)) == 0;
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return verdict(skb, HOOK_TO_OVERLAY, REASON_DROP_UNSUPPORTED_L3, TC_ACT_SHOT);
	if (skb_linearize_headers(skb, ETH_HLEN) < 0)
		return verdict(skb, HOOK_TO_OVERLAY, REASON_DROP_TRUNCATED, TC_ACT_SHOT);
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!ip || flow4_parse(skb, ip, &f) < 0)
		return verdict(skb, HOOK_TO_OVERLAY, REASON_DROP_TRUNCATED, TC_ACT_SHOT);
	if (f.frag == FLOW_FRAG_LATER) {
		switch (frag4_translate(skb, &f, HOOK_TO_OVERLAY)) {
		case -2:
			return verdict(skb, HOOK_TO_OVERLAY, REASON_DROP_NAT_FAILED, TC_ACT_SHOT);
		case SVC_FORWARD:
			masq = 1;
		}
	} else if (snat_frontend_flow4(&f)) {
		cfg = nat_config4();
		if (!cfg)
			return verdict(skb, HOOK_TO_OVERLAY, REASON_DROP_NAT_FAILED, TC_ACT_SHOT);
		frag4_key(&first, &f, HOOK_TO_OVERLAY);
		if (snat_masquerade4(skb, &f, cfg, &reason) < 0)
			return verdict(skb, HOOK_TO_OVERLAY, reason, TC_ACT_SHOT);
		if (f.frag)
			frag4_record(&first, &f, SVC_FORWARD);
		masq = 1;
	}
	/* Every packet is counted once: masqueraded, or else passed on as
	 * another hook encapsulated it, or keyed here. */
	if (!keyed) {
		p = peer_lookup4(f.daddr);
		if (!p || !(p->flags & PEER_F_TUNNEL))
			return verdict(skb, HOOK_TO_OVERLAY, REASON_DROP_NO_PEER, TC_ACT_SHOT);
		if (peer_set_tunnel4(skb, p, tunnel_vni4(p, f.saddr)) < 0)
			return verdict(skb, HOOK_TO_OVERLAY, REASON_DROP_TUNNEL_FAILED, TC_ACT_SHOT);
	}
	if (masq)
		return verdict(skb, HOOK_TO_OVERLAY, REASON_SNAT, TC_ACT_OK);
	return verdict(skb, HOOK_TO_OVERLAY, keyed ? REASON_PASS : REASON_FORWARD_TUNNEL, TC_ACT_OK);
}
