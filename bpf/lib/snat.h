/* Egress SNAT (masquerade) of pods' traffic to outside the cluster, with its
 * own port allocation, and the reverse translation of the replies. */
#pragma once

#include "maps.h"
#include "flow.h"
#include "nat.h"
#include "csum.h"
#include "conntrack.h"
#include "endpoints.h"
#include "icmp.h"
#include "peer.h"

/* Ports tried per new flow: a random start, then the next ones. */
#define SNAT_TRIES 32

#define ICMP_CSUM_OFF 2
#define ICMP_ID_OFF 4

static __always_inline struct nat_config *nat_config4(void)
{
	__u32 zero = 0;
	struct nat_config *c = bpf_map_lookup_elem(&nat_config, &zero);

	return c && c->enabled && c->family == AF_INET ? c : 0;
}

static __always_inline void nat_stat(__u32 stat)
{
	__u64 *v;

	if (DRY_RUN)
		return;
	v = bpf_map_lookup_elem(&nat_stats, &stat);
	if (v)
		*v += 1;
}

static __always_inline int nonmasq_dest4(__be32 daddr)
{
	struct nonmasq_key k = { .prefixlen = 32 + 32, .family = AF_INET };

	k.addr[0] = daddr;
	return bpf_map_lookup_elem(&nonmasq, &k) != 0;
}

/* masq_exempt4 says whether a pod's packet to daddr keeps its source: the
 * cluster's own ranges, and every other node's pods and addresses. */
static __always_inline int masq_exempt4(__be32 daddr)
{
	return nonmasq_dest4(daddr) || peer_lookup4(daddr) != 0;
}

/* nat4_rewrite_id replaces an ICMP echo identifier. The ICMP checksum covers
 * no pseudo header, so addresses never touch it; the identifier does. */
static __always_inline int nat4_rewrite_id(struct __sk_buff *skb, const struct flow4 *f,
					   __be16 old_id, __be16 new_id)
{
	if (old_id == new_id)
		return 0;
	if (bpf_l4_csum_replace(skb, f->l4_off + ICMP_CSUM_OFF, old_id, new_id, 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, f->l4_off + ICMP_ID_OFF, &new_id, 2, 0);
}

/* nat4_apply rewrites one endpoint of f (source when dst is 0) to addr and
 * port (the echo identifier for ICMP). */
static __always_inline int nat4_apply(struct __sk_buff *skb, struct flow4 *f, int dst,
				      __be32 addr, __be16 port)
{
	__be32 old_addr = dst ? f->daddr : f->saddr;
	__be16 old_port = dst ? f->dport : f->sport;

	if (nat4_rewrite(skb, f, dst, old_addr, addr, old_port, port) < 0)
		return -1;
	if (f->icmp == FLOW_ICMP_ECHO && nat4_rewrite_id(skb, f, old_port, port) < 0)
		return -1;
	if (dst) {
		f->daddr = addr;
		f->dport = port;
	} else {
		f->saddr = addr;
		f->sport = port;
	}
	return 0;
}

static __always_inline void nat_touch(struct nat_entry *e, const struct flow4 *f, __u32 bytes)
{
	__u64 expires;

	if (DRY_RUN)
		return;
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, bytes);
	ct_merge_tcp_flags(&e->tcp_flags, f->tcp_flags);
	expires = bpf_ktime_get_ns() + ct_lifetime(f->proto, e->tcp_flags);
	if (expires > e->expires + CT_REFRESH || expires < e->expires)
		e->expires = expires;
}

/* nat_sync_partner keeps the other direction's mapping in step with what a
 * TCP packet says of the connection. FIN or RST shortens it to the closing
 * lifetime and marks it: a reset from the pod is never answered, and
 * without this its reply mapping would hold the port for the established
 * lifetime. A SYN without ACK opening a new connection on a closed flow's
 * tuple (a pod reusing its port) clears the mark, so the allocator cannot
 * hand the port to another flow before the new connection's answer comes
 * back (see nat_reusable). */
static __always_inline void nat_sync_partner(const struct flow4 *f, const struct ct_key *partner)
{
	__u64 closing = bpf_ktime_get_ns() + CT_LIFETIME_TCP_CLOSE;
	struct nat_entry *p;

	if (DRY_RUN || f->proto != IPPROTO_TCP ||
	    !(f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST | TCP_FLAG_SYN)))
		return;
	p = bpf_map_lookup_elem(&snat, partner);
	if (!p)
		return;
	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) {
		p->tcp_flags |= f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST);
		if (p->expires > closing)
			p->expires = closing;
	} else if (!(f->tcp_flags & TCP_FLAG_ACK) && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))) {
		p->tcp_flags = 0;
		p->expires = bpf_ktime_get_ns() + CT_LIFETIME_TCP_SYN;
	}
}

/* nat_reusable says whether the mapping found on a port may be given to a
 * new flow: it has expired, or its TCP connection was reset. A reset
 * connection takes no more packets, so its port is free at once rather
 * than after the closing lifetime: a client that closes with RST at a high
 * rate would otherwise hold every port of the range (the default 28,976
 * ports over 10 s last 2,897 connections a second towards one
 * destination). Linux's NAT
 * likewise lets a new connection take the tuple of one in CLOSE state. A
 * connection closed with FIN keeps its port for the closing lifetime: the
 * side that closed first may still have to acknowledge a retransmitted
 * FIN through it. */
static __always_inline int nat_reusable(const struct nat_entry *e, __u8 proto, __u64 now)
{
	return e->expires < now || (proto == IPPROTO_TCP && (e->tcp_flags & TCP_FLAG_RST));
}

/* Arguments of snat_new_mapping4, packed: a global function takes at most
 * five, each a scalar. */
#define SNAT_META(proto, echo, tcp_flags) \
	((__u32)(proto) | ((__u32)!!(echo) << 8) | ((__u32)(tcp_flags) << 16))
#define SNAT_PORTS(sport, dport) ((__u32)(sport) | ((__u32)(dport) << 16))

static __always_inline void nat_stat_add(__u32 stat, __u64 n)
{
	__u64 *v;

	if (DRY_RUN)
		return;
	v = bpf_map_lookup_elem(&nat_stats, &stat);
	if (v)
		*v += n;
}

/* snat_new_mapping4 allocates a free node port for a new flow saddr:sport
 * -> daddr:dport (network order; for an ICMP echo, sport is the identifier
 * and dport 0) and records both directions. Returns the port in network
 * order (never 0), or minus the reason the flow must be dropped.
 *
 * The search starts at a random port of the range and tries up to
 * SNAT_TRIES in a row. A port is free when no mapping to the same
 * destination (address, port, protocol) holds it, and BPF_NOEXIST on the
 * reply's tuple claims it atomically against other CPUs; a port whose
 * mapping has expired is taken over, and the old flow's forward half
 * deleted so that flow cannot come back through it.
 *
 * This is a global function, not inlined: the verifier checks it once, on
 * its own and for any argument values, instead of walking the loop again
 * for each distinct way the caller reached it. And every try that finds
 * its port taken takes one path back to the loop's head, so the verifier
 * carries one state from try to try, not one per combination of outcomes.
 * Inlined and branchier, this loop cost the 6.1 verifier about 670,000 of
 * its 1,000,000 instructions. */
__noinline int snat_new_mapping4(__u32 saddr, __u32 daddr, __u32 ports, __u32 meta, __u32 bytes)
{
	__u32 zero = 0;
	struct nat_config *cfg = bpf_map_lookup_elem(&nat_config, &zero);
	/* One entry and one key, each filled in turn for the reply half
	 * and the forward one: a frame of two of each, added to that of a
	 * large caller (from_netdev), passed the stack a call chain may use. */
	struct nat_entry e = {}, *old;
	struct ct_key k;
	__u8 proto = meta & 0xff, echo = (meta >> 8) & 1, tcp_flags = meta >> 16;
	__be16 sport = ports & 0xffff, dport = ports >> 16, rdport = echo ? 0 : dport, nport;
	__u64 now = bpf_ktime_get_ns(), expires;
	__u32 port_min, port_max, port, node, reused;
	/* int, not long: before 6.4 the kernel inlines the map's own update
	 * function, whose 32-bit int result arrives zero-extended, so -EEXIST
	 * would read as 4294967279 in a long. */
	int err = -EEXIST;
	int i;

	/* The dry run writes no mapping, so nothing reads saddr or bytes:
	 * clang would then leave their registers unset at the call, and the
	 * verifier refuses a call to a global function with unset arguments. */
	if (DRY_RUN)
		asm volatile("" :: "r"(saddr), "r"(daddr), "r"(ports), "r"(meta), "r"(bytes));
	if (!cfg || cfg->port_min == 0 || cfg->port_max < cfg->port_min)
		return -REASON_DROP_NAT_FAILED;
	node = cfg->addr[0];
	port_min = cfg->port_min;
	port_max = cfg->port_max;
	port = port_min + bpf_get_prandom_u32() % (port_max - port_min + 1);

	expires = now + ct_lifetime(proto, 0);
	e.flags = NAT_F_REVERSE;
	e.to_addr[0] = saddr;
	e.to_port = sport;
	e.expires = expires;
	/* The reply's tuple: destination -> node address and port. */
	ct_key4(&k, daddr, node, rdport, 0, proto);

	for (i = 0; i < SNAT_TRIES; i++) {
		k.dport = bpf_htons((__u16)port);
		err = (int)map_insert(&snat, &k, &e, BPF_NOEXIST);
		if (err != -EEXIST)
			break;
		old = bpf_map_lookup_elem(&snat, &k);
		if (old && nat_reusable(old, proto, now))
			break;
		port = port >= port_max ? port_min : port + 1;
	}
	/* Ports found taken (and live) before the one chosen. Added without
	 * a branch on i: a branch would make the verifier tell the loop's
	 * exits apart by i and walk what follows once per exit. */
	nat_stat_add(NAT_STAT_RETRIES, i);
	nport = k.dport;

	if (err == -EEXIST) {
		__be32 old_addr;
		__be16 old_port;

		/* The last port tried is taken: by a reusable mapping when the
		 * loop stopped there, else every try found a live one. */
		old = bpf_map_lookup_elem(&snat, &k);
		if (!old || !nat_reusable(old, proto, now)) {
			nat_stat(NAT_STAT_NO_PORT);
			return -REASON_DROP_NAT_NO_PORT;
		}
		reused = old->expires < now ? NAT_STAT_REUSED_EXPIRED : NAT_STAT_REUSED_RESET;
		old_addr = old->to_addr[0];
		old_port = old->to_port;
		/* The old flow's forward half goes too, so its next packet
		 * cannot leave through a port that is another flow's now; but
		 * only while it still points at this port: the pod may have
		 * opened a new flow on the same tuple since, with a mapping of
		 * its own. */
		ct_key4(&k, old_addr, daddr, old_port, rdport, proto);
		old = bpf_map_lookup_elem(&snat, &k);
		if (old && !(old->flags & NAT_F_REVERSE) && old->to_port == nport)
			map_remove(&snat, &k);
		ct_key4(&k, daddr, node, rdport, nport, proto);
		err = (int)map_insert(&snat, &k, &e, BPF_ANY);
		if (!err)
			nat_stat(reused);
	}
	if (err) {
		nat_stat(NAT_STAT_MAP_FULL);
		return -REASON_DROP_NAT_MAP_FULL;
	}

	__builtin_memset(&e, 0, sizeof(e));
	e.to_addr[0] = node;
	e.to_port = nport;
	e.expires = expires;
	e.packets = 1;
	e.bytes = bytes;
	e.tcp_flags = tcp_flags;
	ct_key4(&k, saddr, daddr, sport, dport, proto);
	if ((int)map_insert(&snat, &k, &e, BPF_ANY) < 0) {
		ct_key4(&k, daddr, node, rdport, nport, proto);
		map_remove(&snat, &k);
		nat_stat(NAT_STAT_MAP_FULL);
		return -REASON_DROP_NAT_MAP_FULL;
	}
	nat_stat(NAT_STAT_ALLOCATED);
	return nport;
}

/* snat_candidate4 says whether f is a pod's packet that leaves masqueraded
 * when it is TCP, UDP or an ICMP echo: what only ports (or the echo
 * identifier) could still exempt. */
static __always_inline int snat_candidate4(const struct flow4 *f)
{
	return nat_config4() && (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP ||
				 f->proto == IPPROTO_ICMP) &&
	       endpoint_lookup4(f->saddr) && !masq_exempt4(f->daddr);
}

/* snat_masquerade4 gives flow f the node address and a port of its own:
 * the mapping its first packet got, or a new one. Returns 1 when
 * translated, < 0 to drop with *reason. */
static __always_inline int snat_masquerade4(struct __sk_buff *skb, struct flow4 *f,
					    const struct nat_config *cfg, enum reason *reason)
{
	struct nat_entry *e;
	struct ct_key k;
	__be16 port;

	ct_key4(&k, f->saddr, f->daddr, f->sport, f->dport, f->proto);
	e = bpf_map_lookup_elem(&snat, &k);
	if (e && !(e->flags & NAT_F_REVERSE) && e->expires >= bpf_ktime_get_ns()) {
		nat_touch(e, f, skb->len);
		port = e->to_port;
		trace_note(TRACE_SNAT_FLOW, cfg->addr[0], port, 0);
		ct_key4(&k, f->daddr, cfg->addr[0], f->dport, port, f->proto);
		nat_sync_partner(f, &k);
	} else {
		int r = snat_new_mapping4(f->saddr, f->daddr, SNAT_PORTS(f->sport, f->dport),
					  SNAT_META(f->proto, f->icmp == FLOW_ICMP_ECHO, f->tcp_flags),
					  skb->len);

		if (r <= 0 || r > 0xffff) {
			*reason = r < 0 ? -r : REASON_DROP_NAT_FAILED;
			return -1;
		}
		port = r;
		trace_note(TRACE_SNAT_NEW, cfg->addr[0], port, 0);
	}
	if (nat4_apply(skb, f, 0, cfg->addr[0], port) < 0) {
		*reason = REASON_DROP_NAT_FAILED;
		return -1;
	}
	return 1;
}

/* snat_frontend_flow4 says whether f is a packet a frontend of this node
 * (NodePort, external or LoadBalancer IP) sent on to a backend elsewhere:
 * its reversed tuple is a service flow's reply entry, and its source is
 * neither a pod of this node nor the client as its own backend. Such a
 * packet leaves masqueraded, as kube-proxy does for externalTrafficPolicy
 * Cluster: without it the backend would answer the client directly, from
 * an address the client never spoke to. The reply comes back to the
 * node's address, where snat_ingress4 and then the service's conntrack
 * entry restore the client and the frontend (lib/netdev.h). Done where
 * the packet leaves (to_netdev, to_overlay), not where it was translated:
 * from_netdev's frame and the allocator's together would pass the stack a
 * call chain may use. */
static __always_inline int snat_frontend_flow4(const struct flow4 *f)
{
	struct ct_entry *e;
	struct ct_key k;

	/* A pod's own packet (most of what leaves) needs no conntrack lookup. */
	if (!f->has_ports || endpoint_lookup4(f->saddr))
		return 0;
	ct_key4(&k, f->daddr, f->saddr, f->dport, f->sport, f->proto);
	e = ct_find(&k);
	return e && (e->flags & CT_F_REPLY) && !(e->flags & CT_F_HAIRPIN);
}

/* snat_egress4 masquerades a pod's packet to a destination outside the
 * cluster, and a frontend's packet to a backend elsewhere
 * (snat_frontend_flow4). Returns 1 when translated, 0 when not ours to
 * translate, < 0 to drop with *reason. */
static __always_inline int snat_egress4(struct __sk_buff *skb, struct flow4 *f, enum reason *reason)
{
	struct nat_config *cfg = nat_config4();
	__u8 icmp_type;

	if (!cfg || (!f->has_ports && f->icmp != FLOW_ICMP_ECHO))
		return 0;
	/* An echo reply from a pod answers a flow it did not start. The
	 * type tells, not the identifier (the reply's "port"), which may be 0. */
	if (f->icmp == FLOW_ICMP_ECHO &&
	    (bpf_skb_load_bytes(skb, f->l4_off, &icmp_type, 1) < 0 || icmp_type != ICMP_ECHO_TYPE))
		return 0;
	if (snat_frontend_flow4(f))
		return snat_masquerade4(skb, f, cfg, reason);
	if (!endpoint_lookup4(f->saddr) || masq_exempt4(f->daddr))
		return 0;
	return snat_masquerade4(skb, f, cfg, reason);
}

/* snat_icmp_error4 translates an ICMP error about a masqueraded flow (the
 * quoted packet went out as node -> destination) back to the pod: the outer
 * destination, and the quoted source address and port with every checksum
 * they are in. */
static __always_inline int snat_icmp_error4(struct __sk_buff *skb, struct flow4 *f,
					    const struct nat_config *cfg)
{
	struct icmp_quote4 q;
	struct nat_entry *e;
	struct ct_key k;

	if (icmp_quote4_load(skb, f, &q) < 0 || q.ip.saddr != cfg->addr[0])
		return 0;
	ct_key4(&k, q.ip.daddr, q.ip.saddr, q.dport, q.sport, q.ip.protocol);
	e = bpf_map_lookup_elem(&snat, &k);
	if (!e || !(e->flags & NAT_F_REVERSE) || e->expires < bpf_ktime_get_ns())
		return 0;
	if (icmp_quote4_rewrite(skb, f, &q, 0, e->to_addr[0], e->to_port) < 0 ||
	    ip4_set_addr(skb, 1, f->daddr, e->to_addr[0]) < 0)
		return -1;
	f->daddr = e->to_addr[0];
	return 1;
}

/* snat_ingress4 translates a reply to a masqueraded flow back to its pod.
 * Returns 1 when translated, 0 when not a reply of ours, < 0 on failure. */
static __always_inline int snat_ingress4(struct __sk_buff *skb, struct flow4 *f)
{
	struct nat_config *cfg = nat_config4();
	struct nat_entry *e;
	struct ct_key k;

	if (!cfg || f->daddr != cfg->addr[0])
		return 0;
	if (f->icmp == FLOW_ICMP_ERROR)
		return snat_icmp_error4(skb, f, cfg);
	if (!f->has_ports && f->icmp != FLOW_ICMP_ECHO)
		return 0;
	ct_key4(&k, f->saddr, f->daddr, f->sport, f->dport, f->proto);
	e = bpf_map_lookup_elem(&snat, &k);
	if (!e || !(e->flags & NAT_F_REVERSE) || e->expires < bpf_ktime_get_ns())
		return 0;
	nat_touch(e, f, skb->len);
	trace_note(TRACE_SNAT_REPLY, e->to_addr[0], e->to_port, 0);
	if (nat4_apply(skb, f, 1, e->to_addr[0], e->to_port) < 0)
		return -1;
	/* f now reads destination -> pod: the forward mapping is its mirror. */
	ct_key4(&k, f->daddr, f->saddr, f->dport, f->sport, f->proto);
	nat_sync_partner(f, &k);
	return 1;
}
