/* Per-CPU packet and byte counters keyed by (reason, hook). */
#pragma once

#include "maps.h"
#include "events.h"

static __always_inline void count(enum reason reason, enum hook hook, __u32 bytes)
{
	struct counter_key key = { .reason = reason, .hook = hook };
	struct counter_value *val;

	if (DRY_RUN) {
		trace_note(TRACE_VERDICT, reason, hook, 0);
		return;
	}
	val = bpf_map_lookup_elem(&counters, &key);
	if (!val) {
		struct counter_value init = {};

		/* The first packet of a (reason, hook) creates its slot; a race with
		 * another CPU creating it is harmless: both then look it up. */
		bpf_map_update_elem(&counters, &key, &init, BPF_NOEXIST);
		val = bpf_map_lookup_elem(&counters, &key);
		if (!val)
			return;
	}
	val->packets++;
	val->bytes += bytes;
}

/* account_bytes counts a tc program's packet that reason lets live as
 * bytes long (what it was before the program encapsulated it), and raises
 * its trace event when tracing is on (lib/events.h). */
static __always_inline void account_bytes(struct __sk_buff *skb, enum reason reason, enum hook hook, __u32 bytes)
{
	count(reason, hook, bytes);
	if (TRACE_EVENTS && tracing())
		event_trace_skb(skb, hook, reason);
}

/* account counts a tc program's packet that reason lets live. */
static __always_inline void account(struct __sk_buff *skb, enum reason reason, enum hook hook)
{
	account_bytes(skb, reason, hook, skb->len);
}

/* verdict counts the packet, raises a drop event for a drop or a trace
 * event for another traced one, and returns the action for it. */
static __always_inline int verdict(struct __sk_buff *skb, enum hook hook, enum reason reason, int action)
{
	if (reason < REASON_DROP_FIRST) {
		account(skb, reason, hook);
		return action;
	}
	count(reason, hook, skb->len);
	if (!DRY_RUN)
		event_drop_skb(skb, hook, reason);
	return action;
}

/* xdp_drop counts a packet xdp_netdev drops and raises its event. */
static __always_inline int xdp_drop(struct xdp_md *ctx, enum reason reason, __u32 len)
{
	count(reason, HOOK_XDP, len);
	if (!DRY_RUN)
		event_drop_xdp(ctx, HOOK_XDP, reason, len);
	return XDP_DROP;
}
