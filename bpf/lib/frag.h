/* IP fragments: a datagram's translation is decided on its first fragment,
 * the only one with ports, and applied to the later ones (maps.h, frags). */
#pragma once

#include "maps.h"
#include "flow.h"
#include "nat.h"
#include "conntrack.h"

/* How long a datagram's later fragments are expected: the kernel's own
 * reassembly timeout (net.ipv4.ipfrag_time). */
#define FRAG_LIFETIME (30ULL * NSEC_PER_SEC)

/* The result of frag4_translate when the first fragment was not seen. */
#define FRAG_UNKNOWN (-1)

static __always_inline void frag4_key(struct frag_key *k, const struct flow4 *f, enum hook hook)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr = f->saddr;
	k->daddr = f->daddr;
	k->id = f->ip_id;
	k->proto = f->proto;
	k->hook = hook;
}

/* frag4_record remembers what the first fragment that arrived as k became:
 * f's addresses now and the hook's decision. */
static __always_inline void frag4_record(const struct frag_key *k, const struct flow4 *f, int decision)
{
	struct frag_entry e = {};

	if (DRY_RUN)
		return;
	e.expires = bpf_ktime_get_ns() + FRAG_LIFETIME;
	e.saddr = f->saddr;
	e.daddr = f->daddr;
	e.decision = decision;
	bpf_map_update_elem(&frags, k, &e, BPF_ANY);
}

/* frag4_translate gives a later fragment the addresses its first fragment
 * got at this hook and returns the decision made for that one, or
 * FRAG_UNKNOWN when the first fragment was not seen here (or long ago),
 * or -2 when the rewrite failed. */
static __always_inline int frag4_translate(struct __sk_buff *skb, struct flow4 *f, enum hook hook)
{
	struct frag_entry *e;
	struct frag_key k;

	frag4_key(&k, f, hook);
	e = bpf_map_lookup_elem(&frags, &k);
	if (!e || e->expires < bpf_ktime_get_ns())
		return FRAG_UNKNOWN;
	if (ip4_set_addr(skb, 0, f->saddr, e->saddr) < 0 ||
	    ip4_set_addr(skb, 1, f->daddr, e->daddr) < 0)
		return -2;
	f->saddr = e->saddr;
	f->daddr = e->daddr;
	trace_note(TRACE_FRAG, e->decision, 0, 0);
	return e->decision;
}
