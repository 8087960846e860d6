/* Service translation of a packet, shared by the programs that see service
 * traffic: from_pod (pods and their replies), from_netdev (the network) and
 * to_pod (replies the node's stack routes into pods). */
#pragma once

#include "maps.h"
#include "flow.h"
#include "conntrack.h"
#include "endpoints.h"
#include "lb.h"
#include "nat.h"
#include "icmp.h"

/* svc_ct_reply4 writes the reply entry of a flow from client f->saddr:sport
 * to frontend f->daddr:dport on backend b. Replies come from the backend,
 * to the client, or to the frontend address when the client is the backend
 * itself (hairpin). */
static __always_inline int svc_ct_reply4(const struct flow4 *f, const struct backend *b,
					 __u32 svc_id, __u32 backend_id, __u64 create)
{
	struct ct_entry rev = {};
	int hairpin = b->addr[0] == f->saddr;

	rev.svc_id = svc_id;
	rev.backend_id = backend_id;
	rev.flags = CT_F_REPLY | (hairpin ? CT_F_HAIRPIN : 0);
	rev.nat_addr[0] = f->daddr;
	rev.nat_port = f->dport;
	return ct_create4(b->addr[0], hairpin ? f->daddr : f->saddr, b->port, f->sport, f, &rev, create);
}

/* svc_ct_heal_forward4 writes the forward entry of a flow whose reply
 * (f, entry rev) is still tracked, where none is: a full conntrack (LRU)
 * may evict one half of an active flow, and without it the client's next
 * packet would be balanced anew. Called once per CT_REFRESH of the reply. */
static __always_inline void svc_ct_heal_forward4(const struct flow4 *f, const struct ct_entry *rev)
{
	struct ct_entry fwd = {};
	struct flow4 req = *f;

	fwd.svc_id = rev->svc_id;
	fwd.backend_id = rev->backend_id;
	fwd.flags = rev->flags & CT_F_HAIRPIN;
	fwd.tcp_flags = rev->tcp_flags & ~(TCP_FLAG_SYN);
	/* The client: the reply's destination, or the backend itself. */
	req.saddr = (rev->flags & CT_F_HAIRPIN) ? f->saddr : f->daddr;
	ct_create4(req.saddr, rev->nat_addr[0], f->dport, rev->nat_port, &req, &fwd, BPF_NOEXIST);
}

/* reply_translate restores the frontend as source of a backend's reply,
 * and for a hairpinned flow the client (the backend itself) as destination. */
static __always_inline int reply_translate(struct __sk_buff *skb, struct flow4 *f,
					   struct ct_entry *e, __u64 now, enum reason *reason)
{
	__be32 frontend = e->nat_addr[0];
	__be16 frontend_port = e->nat_port;

	trace_note(TRACE_CT_REPLY, e->backend_id, e->svc_id, frontend);
	if (ct_touch(e, f, skb->len, now))
		svc_ct_heal_forward4(f, e);
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

/* svc_backend4 returns the backend for f's flow to svc: the one conntrack
 * remembers while that backend exists (even terminating: only new flows
 * avoid it), else a new choice, recorded in conntrack for both directions.
 * A SYN that reopens the tuple (ct_reopens) is a new flow.
 * NULL with *reason REASON_UNSPEC means the service has no backend.
 *
 * The first packets of a flow can run on two CPUs at once: the forward
 * entry is created only where none exists, and the packet that finds one
 * made meanwhile takes that entry's backend instead of its own choice, so a
 * connection is never split between backends. */
static __always_inline struct backend *svc_backend4(const struct flow4 *f, const struct svc_info *svc,
						    struct ct_entry *e, __u32 bytes, __u64 now,
						    enum reason *reason)
{
	struct ct_entry fwd = {};
	struct ct_key k;
	struct backend *b, *won;
	__u64 create = BPF_NOEXIST, rev_create = BPF_ANY;
	__u32 id;
	int err;

	*reason = REASON_UNSPEC;
	if (e) {
		b = backend_lookup(e->backend_id);
		if (b && !ct_reopens(e, f, b->flags)) {
			trace_note(TRACE_CT_FLOW, e->backend_id, e->svc_id, 0);
			/* The reply entry, if evicted meanwhile, comes back. */
			if (ct_touch(e, f, bytes, now))
				svc_ct_reply4(f, b, e->svc_id, e->backend_id, BPF_NOEXIST);
			return b;
		}
		/* The backend is gone, or a new connection reuses the tuple. */
		create = BPF_ANY;
	}
	id = lb_select4(svc, f->saddr, flow4_hash(f));
	if (!id)
		return 0;
	trace_note(TRACE_LB_NEW, id, svc->id, 0);
	b = backend_lookup(id);
	if (!b) {
		/* svc, or the Maglev table read through it, may predate an
		 * update that has deleted that backend since: slot 1 of the
		 * frontend as it is now names one that exists. */
		id = slot_backend(svc->id, 1);
		b = id ? backend_lookup(id) : 0;
	}
	if (!b) {
		*reason = REASON_DROP_BACKEND_GONE;
		return 0;
	}
	fwd.svc_id = svc->id;
	fwd.backend_id = id;
	fwd.tcp_flags = f->tcp_flags;
	fwd.packets = 1;
	fwd.bytes = bytes;
	fwd.flags = b->addr[0] == f->saddr ? CT_F_HAIRPIN : 0;
	err = ct_create4(f->saddr, f->daddr, f->sport, f->dport, f, &fwd, create);
	if (err == -EEXIST) {
		/* Made since our lookup, unless what is there has expired
		 * (ct_lookup4 saw nothing) or lost its backend. */
		ct_key4(&k, f->saddr, f->daddr, f->sport, f->dport, f->proto);
		e = ct_find(&k);
		if (!now)
			now = bpf_ktime_get_ns();
		won = e && e->expires >= now ? backend_lookup(e->backend_id) : 0;
		if (e && won) {
			ct_touch(e, f, bytes, now);
			b = won;
			id = e->backend_id;
			/* The winner writes the reply entry too: keep its. */
			rev_create = BPF_NOEXIST;
			err = 0;
		} else {
			err = ct_create4(f->saddr, f->daddr, f->sport, f->dport, f, &fwd, BPF_ANY);
		}
	}
	if (err < 0)
		goto full;
	err = svc_ct_reply4(f, b, svc->id, id, rev_create);
	if (err < 0 && err != -EEXIST)
		goto full;
	return b;
full:
	*reason = REASON_DROP_CT_FULL;
	return 0;
}

/* service_translate sends a packet to a service frontend (of the given
 * scope) to one of its backends (svc_backend4); a reply of a translated
 * flow gets its frontend back. A destination that is a local pod
 * (to_pod) is no frontend: only the reply lookup is done for it, and the
 * scope is not used (the to_pod program sees nothing else).
 *
 * With dst set, the caller has not looked the destination up: it is done
 * here when needed, its result in *dst, and to_pod follows from it. A
 * flow conntrack knows goes to a frontend, so its packets skip that
 * lookup (*dst stays NULL) unless the service has gone since. */
static __always_inline int service_translate(struct __sk_buff *skb, struct flow4 *f, __u8 scope,
					     int to_pod, struct endpoint_info **dst, enum reason *reason)
{
	struct svc_info *svc;
	struct ct_entry *e;
	struct backend *b;
	__be32 frontend = f->daddr, backend_addr;
	__be16 backend_port;
	__u64 now;

	e = ct_lookup4(f, &now);
	if (e && (e->flags & CT_F_REPLY))
		return reply_translate(skb, f, e, now, reason);
	if (dst && !e) {
		*dst = endpoint_lookup4(f->daddr);
		to_pod = *dst != 0;
	}
	if (to_pod)
		return SVC_UNTOUCHED;

	svc = svc_lookup4_node(f->daddr, f->dport, f->proto, scope);
	if (!svc) {
		if (dst && e)
			*dst = endpoint_lookup4(f->daddr);
		return SVC_UNTOUCHED;
	}
	trace_note(TRACE_SERVICE, svc->id, svc->backends, svc->algo);
	b = svc_backend4(f, svc, e, skb->len, now, reason);
	if (!b)
		return *reason == REASON_UNSPEC ? SVC_REJECT : SVC_DROP;

	backend_addr = b->addr[0];
	backend_port = b->port;
	if (nat4_rewrite(skb, f, 1, f->daddr, backend_addr, f->dport, backend_port) < 0)
		goto fail;
	f->daddr = backend_addr;
	f->dport = backend_port;
	/* A pod reaching itself through a service would get the reply from its
	 * own address and never leave its namespace: make the frontend the
	 * source, so the reply comes back through here. */
	if (backend_addr == f->saddr) {
		if (nat4_rewrite(skb, f, 0, f->saddr, frontend, f->sport, f->sport) < 0)
			goto fail;
		f->saddr = frontend;
	}
	return SVC_FORWARD;
fail:
	*reason = REASON_DROP_NAT_FAILED;
	return SVC_DROP;
}

/* svc_icmp_error4 translates an ICMP error (unreachable, fragmentation
 * needed, time exceeded) about a service flow, so the side that gets it
 * recognises its own packet in the quote:
 *   - about a request on its way to the backend (the quote reads client ->
 *     backend): the quoted destination becomes the frontend again, and the
 *     error's source too when the backend itself sent it;
 *   - about a reply on its way to the client (the quote reads frontend ->
 *     client): the quoted source becomes the backend, and so does the
 *     error's destination.
 * Hairpinned flows are left alone. Returns SVC_REPLY or SVC_FORWARD as the
 * error now travels like the flow's reply or request, SVC_UNTOUCHED when it
 * is about no service flow, SVC_DROP when a rewrite failed. */
static __always_inline int svc_icmp_error4(struct __sk_buff *skb, struct flow4 *f)
{
	struct icmp_quote4 q;
	struct ct_entry *e;
	struct backend *b;
	struct ct_key k;
	__be32 addr;

	if (icmp_quote4_load(skb, f, &q) < 0)
		return SVC_UNTOUCHED;
	/* The tuple of the quoted packet's answer: conntrack's key for it. */
	ct_key4(&k, q.ip.daddr, q.ip.saddr, q.dport, q.sport, q.ip.protocol);
	e = ct_find(&k);
	if (!e || e->expires < bpf_ktime_get_ns() || (e->flags & CT_F_HAIRPIN))
		return SVC_UNTOUCHED;
	if (e->flags & CT_F_REPLY) {
		addr = e->nat_addr[0];
		if (f->saddr == q.ip.daddr) {
			if (ip4_set_addr(skb, 0, f->saddr, addr) < 0)
				return SVC_DROP;
			f->saddr = addr;
		}
		if (icmp_quote4_rewrite(skb, f, &q, 1, addr, e->nat_port) < 0)
			return SVC_DROP;
		return SVC_REPLY;
	}
	b = backend_lookup(e->backend_id);
	if (!b)
		return SVC_UNTOUCHED;
	addr = b->addr[0];
	if (f->daddr == q.ip.saddr) {
		if (ip4_set_addr(skb, 1, f->daddr, addr) < 0)
			return SVC_DROP;
		f->daddr = addr;
	}
	if (icmp_quote4_rewrite(skb, f, &q, 0, addr, b->port) < 0)
		return SVC_DROP;
	return SVC_FORWARD;
}
