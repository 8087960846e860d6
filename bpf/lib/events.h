/* Drop events for user space (podpath monitor): raised for every
 * REASON_DROP_* verdict, at most event_config.drop_rate per second and CPU
 * with bursts of drop_burst (a token bucket per CPU), so that a flood of
 * bad packets costs the node a bounded amount of work and ring buffer.
 * Every event is accounted in event_state: sent, held back by the rate
 * limit, or lost to a full ring buffer. */
#pragma once

#include "common.h"
#include "maps.h"

#define EVENT_NSEC_PER_SEC 1000000000ULL
/* A bucket refills for at most this long: bounds the arithmetic below
 * (rate <= 1e6 per second, burst <= 1e6, checked by the loader). */
#define EVENT_MAX_REFILL_NS (10 * EVENT_NSEC_PER_SEC)

/* Puts struct event in the programs' BTF, for user space's mirror. */
const volatile struct event event_layout;

/* event_admit takes a token from this CPU's bucket: the state to account
 * the event in, or 0 when drop events are off or the limit holds it back. */
static __always_inline struct event_state *event_admit(void)
{
	struct event_config *cfg;
	struct event_state *st;
	__u32 zero = 0;
	__u64 now, cap, elapsed, tokens;

	cfg = bpf_map_lookup_elem(&event_config, &zero);
	st = bpf_map_lookup_elem(&event_state, &zero);
	if (!cfg || !st || !cfg->drop_rate)
		return 0;
	now = bpf_ktime_get_ns();
	elapsed = now - st->refill_ns;
	if (elapsed > EVENT_MAX_REFILL_NS)
		elapsed = EVENT_MAX_REFILL_NS;
	cap = (__u64)cfg->drop_burst * EVENT_NSEC_PER_SEC;
	tokens = st->tokens + elapsed * cfg->drop_rate;
	if (tokens > cap)
		tokens = cap;
	st->refill_ns = now;
	if (tokens < EVENT_NSEC_PER_SEC) {
		st->tokens = tokens;
		st->rate_limited++;
		return 0;
	}
	st->tokens = tokens - EVENT_NSEC_PER_SEC;
	return st;
}

/* event_fill reads the packet's IPv4 addresses, protocol and ports (ICMP:
 * type and code) into t; l3 is the IP header's offset. */
#define event_fill(load, ctx, t, l3)                                           \
	({                                                                     \
		__u8 __vihl = 0, __l4[2];                                      \
		__be16 __frag = 0;                                             \
		if (load(ctx, (l3), &__vihl, 1) == 0 && (__vihl >> 4) == 4 &&  \
		    (__vihl & 0xf) >= 5 &&                                     \
		    load(ctx, (l3) + 12, &(t)->saddr, 8) == 0 &&               \
		    load(ctx, (l3) + 9, &(t)->proto, 1) == 0 &&                \
		    load(ctx, (l3) + 6, &__frag, 2) == 0 &&                    \
		    !(__frag & bpf_htons(0x1fff))) {                           \
			__u32 __off = (l3) + (__vihl & 0xf) * 4;               \
			if ((t)->proto == IPPROTO_ICMP) {                      \
				if (load(ctx, __off, __l4, 2) == 0) {          \
					(t)->sport = bpf_htons(__l4[0]);       \
					(t)->dport = bpf_htons(__l4[1]);       \
				}                                              \
			} else if ((t)->proto == IPPROTO_TCP ||                \
				   (t)->proto == IPPROTO_UDP) {                \
				load(ctx, __off, &(t)->sport, 4);              \
			}                                                      \
		}                                                              \
	})

/* event_reserve takes a token and a record in the ring buffer, filled with
 * what every drop event has; 0 when none is to be sent. */
static __always_inline struct event *event_reserve(__u32 ifindex, __u32 len, __u32 hook, __u32 reason)
{
	struct event_state *st = event_admit();
	struct event *e;

	if (!st)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		st->ringbuf_full++;
		return 0;
	}
	st->sent++;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = ifindex;
	e->len = len;
	e->reason = reason;
	e->hook = hook;
	e->kind = EVENT_DROP;
	return e;
}

/* event_drop_skb raises a drop event for a tc program's packet. Not
 * inlined (one copy per program, off the forwarding path) and light on
 * stack: it runs on top of the program's own frame. */
static __noinline int event_drop_skb(struct __sk_buff *skb, __u32 hook, __u32 reason)
{
	struct event *e = event_reserve(skb->ifindex, skb->len, hook, reason);

	if (!e)
		return 0;
	if (bpf_skb_load_bytes(skb, 12, &e->ethertype, 2) == 0 && e->ethertype == bpf_htons(ETH_P_IP))
		event_fill(bpf_skb_load_bytes, skb, &e->tuple, ETH_HLEN);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* xdp_load_bytes reads len bytes at off of an XDP frame's linear part. */
static __always_inline int xdp_load_bytes(struct xdp_md *ctx, __u32 off, void *to, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *p;

	if (off > 128)
		return -1;
	p = data + off;
	switch (len) {
	case 1:
		if ((void *)(p + 1) > data_end)
			return -1;
		__builtin_memcpy(to, p, 1);
		return 0;
	case 2:
		if ((void *)(p + 2) > data_end)
			return -1;
		__builtin_memcpy(to, p, 2);
		return 0;
	case 4:
		if ((void *)(p + 4) > data_end)
			return -1;
		__builtin_memcpy(to, p, 4);
		return 0;
	case 8:
		if ((void *)(p + 8) > data_end)
			return -1;
		__builtin_memcpy(to, p, 8);
		return 0;
	}
	return -1;
}

/* event_drop_xdp is event_drop_skb for xdp_netdev. */
static __noinline int event_drop_xdp(struct xdp_md *ctx, __u32 hook, __u32 reason, __u32 len)
{
	struct event *e = event_reserve(ctx->ingress_ifindex, len, hook, reason);

	if (!e)
		return 0;
	if (xdp_load_bytes(ctx, 12, &e->ethertype, 2) == 0 && e->ethertype == bpf_htons(ETH_P_IP))
		event_fill(xdp_load_bytes, ctx, &e->tuple, ETH_HLEN);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
