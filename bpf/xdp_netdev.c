// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdp_netdev: XDP on the node's uplink, the earliest point a packet from the
 * network can be seen. Decides, in order:
 *   1. frames too short for the headers they claim and IPv4 headers that
 *      cannot be valid are dropped (counted), before the stack allocates an
 *      skb for them;
 *   2. TCP and UDP to an externally reachable service frontend (NodePort,
 *      external or LoadBalancer IP) get their backend here, exactly as
 *      from_netdev would choose it (same conntrack, same selection), and
 *      are rewritten in place; from_netdev then only has to deliver them;
 *   3. everything else passes on unchanged: frontends without backends
 *      (from_netdev answers those), flows whose backend is not a pod on this
 *      node (from_netdev masquerades those too), replies of masqueraded flows
 *      (from_netdev translates those first, even on a port that is a
 *      hostPort's too), and a client that is its own backend (hairpin:
 *      from_netdev rewrites its source as well). */
#include "lib/common.h"
#include "lib/csum.h"
#include "lib/counters.h"
#include "lib/flow.h"
#include "lib/svc.h"
#include "lib/endpoints.h"

char __license[] SEC("license") = "Dual BSD/GPL";

struct ports {
	__be16 sport;
	__be16 dport;
};

/* masqueraded_reply4 tells whether f is a reply of a pod's masqueraded
 * flow, as snat_ingress4 (lib/snat.h) finds one. */
static __always_inline int masqueraded_reply4(const struct flow4 *f)
{
	struct nat_entry *e;
	struct ct_key k;

	ct_key4(&k, f->saddr, f->daddr, f->sport, f->dport, f->proto);
	e = bpf_map_lookup_elem(&snat, &k);
	return e && (e->flags & NAT_F_REVERSE) && e->expires >= bpf_ktime_get_ns();
}

/* xdp_service translates a TCP or UDP packet to an external frontend. It
 * returns 1 when the packet was rewritten. */
static __always_inline int xdp_service(struct iphdr *ip, void *data_end, __u32 len)
{
	struct svc_info *svc;
	struct ct_entry *e;
	__u64 now;
	struct backend *b;
	struct ports *ports;
	__u16 *l4_csum;
	struct flow4 f = {};
	enum reason reason;

	void *l3_end = (void *)ip + bpf_ntohs(ip->tot_len);

	/* Fragments are tc's: it remembers the first one's translation for
	 * the rest (lib/frag.h). */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return 0;
	ports = (void *)ip + ip->ihl * 4;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)ports;

		/* A header cut short by the IP length is from_netdev's to drop. */
		if ((void *)(tcp + 1) > data_end || (void *)(tcp + 1) > l3_end)
			return 0;
		f.tcp_flags = ((__u8 *)tcp)[13];
		l4_csum = &tcp->check;
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)ports;

		if ((void *)(udp + 1) > data_end || (void *)(udp + 1) > l3_end)
			return 0;
		l4_csum = &udp->check;
	} else {
		return 0;
	}
	f.saddr = ip->saddr;
	f.daddr = ip->daddr;
	f.sport = ports->sport;
	f.dport = ports->dport;
	f.proto = ip->protocol;
	f.has_ports = 1;

	if (masqueraded_reply4(&f))
		return 0;
	e = ct_lookup4(&f, &now);
	if (e && (e->flags & CT_F_REPLY))
		return 0;
	svc = svc_lookup4_node(f.daddr, f.dport, f.proto, SVC_SCOPE_EXTERNAL);
	if (!svc || (!e && !svc->backends))
		return 0;
	trace_note(TRACE_SERVICE, svc->id, svc->backends, svc->algo);
	b = svc_backend4(&f, svc, e, len, now, &reason);
	/* A backend elsewhere needs the node's address as source too
	 * (lib/netdev.h): from_netdev does both, finding the backend chosen
	 * here in conntrack. */
	if (!b || b->addr[0] == f.saddr || !endpoint_lookup4(b->addr[0]))
		return 0;

	/* The L4 checksum covers the pseudo header's addresses; a UDP
	 * datagram without a checksum keeps none. */
	if (ip->protocol == IPPROTO_TCP || *l4_csum) {
		csum_replace4(l4_csum, ip->daddr, b->addr[0]);
		csum_replace2(l4_csum, ports->dport, b->port);
		if (ip->protocol == IPPROTO_UDP && !*l4_csum)
			*l4_csum = 0xffff;
	}
	csum_replace4(&ip->check, ip->daddr, b->addr[0]);
	ip->daddr = b->addr[0];
	ports->dport = b->port;
	return 1;
}

SEC("xdp")
int xdp_netdev(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end)
		return xdp_drop(ctx, REASON_DROP_TRUNCATED, len);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return xdp_drop(ctx, REASON_DROP_TRUNCATED, len);
		if (ip->version != 4 || ip->ihl < 5 ||
		    bpf_ntohs(ip->tot_len) < ip->ihl * 4)
			return xdp_drop(ctx, REASON_DROP_BAD_IP_HEADER, len);
		if (sizeof(*eth) + bpf_ntohs(ip->tot_len) > len)
			return xdp_drop(ctx, REASON_DROP_TRUNCATED, len);
		if (xdp_service(ip, data_end, len)) {
			count(REASON_PASS_TRANSLATED, HOOK_XDP, len);
			return XDP_PASS;
		}
	}
	count(REASON_TO_STACK, HOOK_XDP, len);
	return XDP_PASS;
}
