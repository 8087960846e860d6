/* Per-CPU packet and byte counters keyed by (reason, hook). */
#pragma once

#include "maps.h"

static __always_inline void count(enum reason reason, enum hook hook, __u32 bytes)
{
	struct counter_key key = { .reason = reason, .hook = hook };
	struct counter_value *val;

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

/* verdict counts the packet and returns the action for it. */
static __always_inline int verdict(struct __sk_buff *skb, enum hook hook, enum reason reason, int action)
{
	count(reason, hook, skb->len);
	return action;
}
