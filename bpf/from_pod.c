// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_pod: tc ingress on a pod's host-side veth, i.e. every packet a pod
 * sends. Decides, in order:
 *   1. malformed or non-IPv4/ARP frames are dropped with a reason;
 *   2. the source must be the endpoint that owns this veth (IP and MAC),
 *      otherwise the packet is a spoof and is dropped;
 *   3. a reply of a translated service flow gets its frontend address back
 *      as source; a packet to a service frontend gets a backend (conntrack
 *      keeps the choice for the flow) as destination, or, when the service
 *      has no backend, is answered with ICMP port unreachable;
 *   4. a destination that is a pod on this node is routed straight into that
 *      pod's namespace (TTL decremented, MACs rewritten, bpf_redirect_peer),
 *      never touching a bridge or the host's routing; a translated reply to
 *      elsewhere is routed out by FIB lookup;
 *   5. everything else goes to the host stack. */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/endpoints.h"
#include "lib/counters.h"
#include "lib/flow.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/nat.h"
#include "lib/icmp.h"
#include "lib/fib.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline int verdict(struct __sk_buff *skb, enum reason reason, int action)
{
	count(reason, HOOK_FROM_POD, skb->len);
	return action;
}

static __always_inline int drop(struct __sk_buff *skb, enum reason reason)
{
	return verdict(skb, reason, TC_ACT_SHOT);
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
	return verdict(skb, REASON_ARP_TO_STACK, TC_ACT_OK);
}

/* What service translation did to a packet. */
enum svc_result {
	SVC_UNTOUCHED,	/* not service traffic */
	SVC_FORWARD,	/* destination rewritten to a backend */
	SVC_REPLY,	/* a reply: source rewritten to the frontend */
	SVC_REJECT,	/* no backend: the packet is now an ICMP error */
	SVC_DROP,	/* dropped; *reason says why */
};

/* reply_translate restores the frontend as source of a backend's reply,
 * and for a hairpinned flow the client (the backend itself) as destination. */
static __always_inline int reply_translate(struct __sk_buff *skb, struct flow4 *f,
					   struct ct_entry *e, enum reason *reason)
{
	__be32 frontend = e->nat_addr[0];
	__be16 frontend_port = e->nat_port;

	ct_touch(e, f, skb->len);
	if ((e->flags & CT_F_HAIRPIN) &&
	    nat4_rewrite(skb, f, 1, f->daddr, f->saddr, f->dport, f->dport) < 0)
		goto fail;
	if (e->flags & CT_F_HAIRPIN)
		f->daddr = f->saddr;
	if (nat4_rewrite(skb, f, 0, f->saddr, frontend, f->sport, frontend_port) < 0)
		goto fail;
	f->saddr = frontend;
	f->sport = frontend_port;
	return SVC_REPLY;
fail:
	*reason = REASON_DROP_NAT_FAILED;
	return SVC_DROP;
}

/* service_translate sends a packet to a service frontend to one of its
 * backends: the flow's backend if conntrack knows it, else a new choice. */
static __always_inline int service_translate(struct __sk_buff *skb, struct flow4 *f,
					     enum reason *reason)
{
	struct ct_entry fwd = {}, rev = {}, *e;
	struct svc_info *svc;
	struct backend *b = 0;
	__be32 frontend = f->daddr, backend_addr;
	__be16 frontend_port = f->dport, backend_port;
	__u32 id = 0;
	int hairpin;

	e = ct_lookup4(f);
	if (e && (e->flags & CT_F_REPLY))
		return reply_translate(skb, f, e, reason);

	svc = svc_lookup4_node(f->daddr, f->dport, f->proto, SVC_SCOPE_INTERNAL);
	if (!svc)
		return SVC_UNTOUCHED;

	if (e) {
		/* A known flow keeps its backend while the backend exists, even
		 * when it is terminating: only new flows avoid it. */
		id = e->backend_id;
		b = backend_lookup(id);
		if (b)
			ct_touch(e, f, skb->len);
	}
	if (!b) {
		id = lb_select4(svc, f->saddr, flow4_hash(f));
		if (!id)
			return SVC_REJECT;
		b = backend_lookup(id);
		if (!b) {
			*reason = REASON_DROP_NO_BACKEND;
			return SVC_DROP;
		}
		hairpin = b->addr[0] == f->saddr;
		fwd.svc_id = rev.svc_id = svc->id;
		fwd.backend_id = rev.backend_id = id;
		fwd.tcp_flags = f->tcp_flags;
		fwd.packets = 1;
		fwd.bytes = skb->len;
		fwd.flags = hairpin ? CT_F_HAIRPIN : 0;
		rev.flags = CT_F_REPLY | fwd.flags;
		rev.nat_addr[0] = frontend;
		rev.nat_port = frontend_port;
		/* Replies come from the backend, to the client, or to the
		 * frontend address when the client is the backend itself. */
		if (ct_create4(b->addr[0], hairpin ? frontend : f->saddr, b->port, f->sport, f, &rev) < 0 ||
		    ct_create4(f->saddr, f->daddr, f->sport, f->dport, f, &fwd) < 0) {
			*reason = REASON_DROP_CT_FULL;
			return SVC_DROP;
		}
	}
	backend_addr = b->addr[0];
	backend_port = b->port;
	hairpin = backend_addr == f->saddr;
	if (nat4_rewrite(skb, f, 1, f->daddr, backend_addr, f->dport, backend_port) < 0)
		goto fail;
	f->daddr = backend_addr;
	f->dport = backend_port;
	/* A pod reaching itself through a service would get the reply from its
	 * own address and never leave its namespace: make the frontend the
	 * source, so the reply comes back through here. */
	if (hairpin) {
		if (nat4_rewrite(skb, f, 0, f->saddr, frontend, f->sport, f->sport) < 0)
			goto fail;
		f->saddr = frontend;
	}
	return SVC_FORWARD;
fail:
	*reason = REASON_DROP_NAT_FAILED;
	return SVC_DROP;
}

/* forward4 delivers a (possibly translated) packet: into a local pod, out by
 * the FIB for a translated reply, or to the stack. */
static __always_inline int forward4(struct __sk_buff *skb, int svc)
{
	struct endpoint_info *dst;
	struct ethhdr *eth;
	struct iphdr *ip;
	int ok, ret;

	eth = header_at(skb, 0, struct ethhdr);
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!eth || !ip)
		return drop(skb, REASON_DROP_TRUNCATED);

	dst = endpoint_lookup4(ip->daddr);
	if (!dst && svc != SVC_REPLY)
		return verdict(skb, REASON_TO_STACK, TC_ACT_OK);

	/* Routed one hop, like the node would: TTL down, gateway MAC as source. */
	if (ip->ttl <= 1)
		return drop(skb, REASON_DROP_TTL_EXCEEDED);
	ipv4_decrease_ttl(ip);
	if (dst) {
		mac_copy(eth->h_dest, dst->mac);
		mac_copy(eth->h_source, dst->node_mac);
		count(REASON_FORWARD_LOCAL, HOOK_FROM_POD, skb->len);
		return bpf_redirect_peer(dst->ifindex, 0);
	}
	/* A reply whose source is now a node address (NodePort): the stack
	 * would drop it as a martian, so route it ourselves. */
	ret = fib_redirect4(skb, ip->saddr, ip->daddr, &ok);
	return verdict(skb, ok ? REASON_FORWARD_FIB : REASON_DROP_FIB_FAILED, ret);
}

static __always_inline int from_pod_ipv4(struct __sk_buff *skb)
{
	enum reason reason = REASON_UNSPEC;
	struct endpoint_info *src;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct flow4 f;
	int svc = SVC_UNTOUCHED;
	__u32 hlen;

	if (skb_linearize_headers(skb, ETH_HLEN + sizeof(*ip)) < 0)
		return drop(skb, REASON_DROP_TRUNCATED);
	eth = header_at(skb, 0, struct ethhdr);
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!eth || !ip)
		return drop(skb, REASON_DROP_TRUNCATED);
	if (ip->version != 4 || ip->ihl < 5)
		return drop(skb, REASON_DROP_BAD_IP_HEADER);
	hlen = ip->ihl * 4;
	if (bpf_ntohs(ip->tot_len) < hlen)
		return drop(skb, REASON_DROP_BAD_IP_HEADER);
	if (ETH_HLEN + bpf_ntohs(ip->tot_len) > skb->len)
		return drop(skb, REASON_DROP_TRUNCATED);

	src = endpoint_lookup4(ip->saddr);
	if (!src || src->ifindex != skb->ingress_ifindex)
		return drop(skb, REASON_DROP_SPOOFED_IP);
	if (!mac_equal(src->mac, eth->h_source))
		return drop(skb, REASON_DROP_SPOOFED_MAC);

	if (flow4_parse(skb, ip, &f) < 0)
		return drop(skb, REASON_DROP_TRUNCATED);
	if (f.has_ports) {
		svc = service_translate(skb, &f, &reason);
		if (svc == SVC_DROP)
			return drop(skb, reason);
		if (svc == SVC_REJECT) {
			if (icmp4_unreach_reply(skb, f.daddr) < 0)
				return drop(skb, REASON_DROP_NO_BACKEND);
			count(REASON_SVC_REJECT, HOOK_FROM_POD, skb->len);
			return bpf_redirect_peer(skb->ingress_ifindex, 0);
		}
	}
	return forward4(skb, svc);
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	struct ethhdr *eth;

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
