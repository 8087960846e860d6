/* Connection tracking for translated flows: one entry per direction, keyed
 * by the tuple as it appears on the wire in that direction. */
#pragma once

#include "maps.h"
#include "flow.h"

#define NSEC_PER_SEC 1000000000ULL

/* Lifetimes after the last packet, as Cilium and nf_conntrack roughly use. */
#define CT_LIFETIME_TCP		(21600ULL * NSEC_PER_SEC)	/* established */
#define CT_LIFETIME_TCP_SYN	(60ULL * NSEC_PER_SEC)		/* handshake */
#define CT_LIFETIME_TCP_CLOSE	(10ULL * NSEC_PER_SEC)		/* FIN or RST seen */
#define CT_LIFETIME_NONTCP	(60ULL * NSEC_PER_SEC)
/* Refresh the expiry at most this often: a write per packet would bounce
 * the entry's cache line between CPUs. */
#define CT_REFRESH		(1ULL * NSEC_PER_SEC)

static __always_inline __u64 ct_lifetime(__u8 proto, __u8 tcp_flags)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		return CT_LIFETIME_TCP_CLOSE;
	if (tcp_flags & TCP_FLAG_ACK)
		return CT_LIFETIME_TCP;
	return CT_LIFETIME_TCP_SYN;
}

/* ct_merge_tcp_flags adds the flags of a packet to those seen so far. A SYN
 * on a closed flow opens a new connection on the same tuple: its lifetimes
 * start over instead of staying at the closing one. */
static __always_inline void ct_merge_tcp_flags(__u8 *seen, __u8 flags)
{
	if ((flags & TCP_FLAG_SYN) && (*seen & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		*seen = flags;
	else if ((*seen | flags) != *seen)
		*seen |= flags;
}

#ifdef PODPATH_DRY_RUN
/* The dry run's conntrack entries: what the flow's packet would have
 * created, kept for the later hooks of the same trace (to_netdev finds a
 * NodePort flow's reply entry that from_netdev made). The run's own,
 * emptied by its caller before each trace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 16);
} trace_ct SEC(".maps");
#endif

/* ct_find is the entry of key k: the node's, or in the dry run the one
 * the trace has made so far. */
static __always_inline struct ct_entry *ct_find(const struct ct_key *k)
{
#ifdef PODPATH_DRY_RUN
	struct ct_entry *e = bpf_map_lookup_elem(&trace_ct, k);

	if (e)
		return e;
#endif
	return bpf_map_lookup_elem(&conntrack, k);
}

static __always_inline void ct_key4(struct ct_key *k, __be32 saddr, __be32 daddr,
				    __be16 sport, __be16 dport, __u8 proto)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr[0] = saddr;
	k->daddr[0] = daddr;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->family = AF_INET;
}

/* ct_lookup4 returns the live entry of the flow as seen in f, or NULL.
 * An expired entry is as good as none: the LRU or the reaper removes it.
 * *now is the time an entry was found at, for ct_touch; 0 when there was
 * none (the clock is read only then: it costs as much as the lookup). */
static __always_inline struct ct_entry *ct_lookup4(const struct flow4 *f, __u64 *now)
{
	struct ct_key k;
	struct ct_entry *e;

	*now = 0;
	ct_key4(&k, f->saddr, f->daddr, f->sport, f->dport, f->proto);
	e = ct_find(&k);
	if (!e)
		return NULL;
	*now = bpf_ktime_get_ns();
	if (e->expires < *now)
		return NULL;
	return e;
}

/* ct_touch accounts a packet and pushes the entry's expiry out. Returns 1
 * when it did (at most once per CT_REFRESH, or on a change of lifetime).
 * The packet and byte counts are added without atomics: one direction of
 * a flow is nearly always on one CPU, and when two race a count can be
 * lost, which only the counts themselves show. Two locked additions per
 * packet cost more than the rest of the entry's upkeep. */
static __always_inline int ct_touch(struct ct_entry *e, const struct flow4 *f, __u32 bytes, __u64 now)
{
	__u64 expires;

	if (DRY_RUN)
		return 0;
	e->packets++;
	e->bytes += bytes;
	ct_merge_tcp_flags(&e->tcp_flags, f->tcp_flags);
	expires = now + ct_lifetime(f->proto, e->tcp_flags);
	if (expires > e->expires + CT_REFRESH || expires < e->expires) {
		e->expires = expires;
		return 1;
	}
	return 0;
}

/* ct_reopens says whether packet f starts a new connection on the tuple of
 * entry e: a SYN without ACK after the flow was closed (FIN or RST seen), as
 * a client that reuses its port does, or towards a terminating backend,
 * which takes no new connections. */
static __always_inline int ct_reopens(const struct ct_entry *e, const struct flow4 *f, __u8 backend_flags)
{
	if (f->proto != IPPROTO_TCP || (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		return 0;
	return (e->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) || (backend_flags & BACKEND_F_TERMINATING);
}

/* ct_create4 writes the entry of one direction of a flow. With BPF_NOEXIST
 * it fails with -EEXIST when another packet of the flow got there first. */
static __always_inline int ct_create4(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport,
				      const struct flow4 *f, struct ct_entry *e, __u64 flags)
{
	struct ct_key k;

	ct_key4(&k, saddr, daddr, sport, dport, f->proto);
	e->expires = bpf_ktime_get_ns() + ct_lifetime(f->proto, e->tcp_flags);
#ifdef PODPATH_DRY_RUN
	if (flags == BPF_NOEXIST && ct_find(&k))
		return -EEXIST;
	return (int)bpf_map_update_elem(&trace_ct, &k, e, BPF_ANY);
#else
	/* int: before 6.4 the inlined update's result arrives zero-extended. */
	return (int)bpf_map_update_elem(&conntrack, &k, e, flags);
#endif
}
