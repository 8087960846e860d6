/* Drop events for user space (podpath monitor): raised for every
 * REASON_DROP_* verdict, at most event_config.drop_rate per second and CPU
 * with bursts of drop_burst (a token bucket per CPU), so that a flood of
 * bad packets costs the node a bounded amount of work and ring buffer.
 * Every event is accounted in event_state: sent, held back by the rate
 * limit, or lost to a full ring buffer. */
#pragma once

#include "common.h"
#include "maps.h"
#include "vxlan.h"

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
/* event_new reserves a record of kind in the ring buffer and fills in
 * what every event has; 0 when the ring buffer is full. */
static __always_inline struct event *event_new(__u32 kind, __u32 ifindex, __u32 len, __u32 hook, __u32 reason)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = ifindex;
	e->len = len;
	e->reason = reason;
	e->hook = hook;
	e->kind = kind;
	return e;
}

static __always_inline struct event *event_reserve(__u32 ifindex, __u32 len, __u32 hook, __u32 reason)
{
	struct event_state *st = event_admit();
	struct event *e;

	if (!st)
		return 0;
	e = event_new(EVENT_DROP, ifindex, len, hook, reason);
	if (!e) {
		st->ringbuf_full++;
		return 0;
	}
	st->sent++;
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

/* load_direct reads len bytes at off of a packet's linear part, data to
 * data_end, without a helper call. */
static __always_inline int load_direct(void *data, void *data_end, __u32 off, void *to, __u32 len)
{
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

/* xdp_load_bytes reads len bytes at off of an XDP frame's linear part. */
static __always_inline int xdp_load_bytes(struct xdp_md *ctx, __u32 off, void *to, __u32 len)
{
	return load_direct((void *)(long)ctx->data, (void *)(long)ctx->data_end, off, to, len);
}

/* skb_bytes reads len bytes at off of a tc program's packet: straight from
 * its linear part, else (headers in fragments) by bpf_skb_load_bytes. */
static __always_inline int skb_bytes(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	if (load_direct((void *)(long)skb->data, (void *)(long)skb->data_end, off, to, len) == 0)
		return 0;
	return (int)bpf_skb_load_bytes(skb, off, to, len);
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

/* Trace events (podpath monitor --trace): when event_config.trace_flags
 * is set, each packet a tc program lets live and that matches the filter
 * raises an event at the hook's verdict, one in trace_sample of them,
 * with the packet as it arrived at the hook (orig) and as it leaves it.
 * With tracing off (the default) the programs are loaded with
 * trace_capable 0 and pay nothing for it; while it is on, a hook whose
 * packet is not selected pays an array lookup at its start and one at its
 * verdict. */

/* This CPU's packet as it arrived at the hook now running: written at the
 * hook's start when tracing is on, read at its verdict. Each object's own. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct event_tuple);
	__uint(max_entries, 1);
} trace_orig SEC(".maps");

/* Set by the loader: 1 while tracing is on (switching it reloads the
 * programs, see loader.SetTracing), else 0, and then the verifier removes
 * every check of tracing: the programs cost what they cost without it. */
volatile const __u32 trace_capable = 0;

static __always_inline int tracing(void)
{
	__u32 zero = 0;
	struct event_config *cfg;

	if (!trace_capable)
		return 0;
	cfg = bpf_map_lookup_elem(&event_config, &zero);
	return cfg && cfg->trace_flags;
}

/* event_trace_begin remembers the packet as it arrives at the hook. */
static __noinline int event_trace_begin(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct event_tuple *t = bpf_map_lookup_elem(&trace_orig, &zero);
	__be16 proto = 0;

	if (!t)
		return 0;
	__builtin_memset(t, 0, sizeof(*t));
	if (skb_bytes(skb, 12, &proto, 2) == 0 && proto == bpf_htons(ETH_P_IP))
		event_fill(skb_bytes, skb, t, ETH_HLEN);
	return 0;
}

static __always_inline int tuple_has(const struct event_tuple *t, __be32 addr)
{
	return t->saddr == addr || t->daddr == addr;
}

/* event_l3 is where the IP header a trace event describes starts: the
 * inner one of a VXLAN packet of the overlay (IPv4 without options or
 * fragmentation, UDP to the overlay port, an IPv4 frame inside), which
 * from_pod may have just encapsulated, so that its event names the pods,
 * as it did before; else the packet's own. */
static __always_inline __u32 event_l3(struct __sk_buff *skb)
{
	__u8 h[sizeof(struct iphdr) + sizeof(struct udphdr)];
	__be16 inner = 0;

	if (!overlay_port || skb_bytes(skb, ETH_HLEN, h, sizeof(h)) < 0)
		return ETH_HLEN;
	if (h[0] != 0x45 || h[9] != IPPROTO_UDP || (h[6] & 0x3f) || h[7] ||
	    *(__u16 *)&h[sizeof(struct iphdr) + 2] != overlay_port)
		return ETH_HLEN;
	if (skb_bytes(skb, ETH_HLEN + OVERLAY_POP_LEN - 2, &inner, 2) < 0 || inner != bpf_htons(ETH_P_IP))
		return ETH_HLEN;
	return ETH_HLEN + OVERLAY_POP_LEN;
}

/* skb_has_addr says whether the IPv4 header at l3 has addr as source or
 * destination. */
static __always_inline int skb_has_addr(struct __sk_buff *skb, __u32 l3, __be32 addr)
{
	__be32 addrs[2];

	return skb_bytes(skb, l3 + 12, addrs, sizeof(addrs)) == 0 && (addrs[0] == addr || addrs[1] == addr);
}

/* event_trace_skb raises the trace event of a packet that reason lets
 * live at hook, when the filter selects it and the sample takes it. */
static __noinline int event_trace_skb(struct __sk_buff *skb, __u32 hook, __u32 reason)
{
	__u32 zero = 0;
	struct event_config *cfg = bpf_map_lookup_elem(&event_config, &zero);
	struct trace_state *st = bpf_map_lookup_elem(&trace_state, &zero);
	struct event_tuple *orig = bpf_map_lookup_elem(&trace_orig, &zero);
	struct event_tuple now = {};
	struct event *e;
	__be16 proto = 0;
	__u32 flags, l3 = ETH_HLEN;
	int ip;

	if (!cfg || !st || !orig)
		return 0;
	flags = cfg->trace_flags;
	ip = skb_bytes(skb, 12, &proto, 2) == 0 && proto == bpf_htons(ETH_P_IP);
	if (ip)
		l3 = event_l3(skb);
	/* The filter first, on what it needs: most packets are not traced. */
	if (!(flags & TRACE_F_ALL) &&
	    !((flags & TRACE_F_IFINDEX) && (skb->ifindex == cfg->trace_ifindex ||
					    skb->ingress_ifindex == cfg->trace_ifindex)) &&
	    !((flags & TRACE_F_ADDR) &&
	      ((ip && (skb_has_addr(skb, ETH_HLEN, cfg->trace_addr) ||
		       (l3 != ETH_HLEN && skb_has_addr(skb, l3, cfg->trace_addr)))) ||
	       tuple_has(orig, cfg->trace_addr))))
		return 0;
	if (ip)
		event_fill(skb_bytes, skb, &now, l3);
	st->matched++;
	if (cfg->trace_sample > 1 && st->matched % cfg->trace_sample) {
		st->sampled_out++;
		return 0;
	}
	e = event_new(EVENT_TRACE, skb->ifindex, skb->len, hook, reason);
	if (!e) {
		st->ringbuf_full++;
		return 0;
	}
	st->sent++;
	e->ethertype = proto;
	e->tuple = now;
	if (orig->saddr != now.saddr || orig->daddr != now.daddr ||
	    orig->sport != now.sport || orig->dport != now.dport || orig->proto != now.proto)
		e->orig = *orig;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* trace_begin starts a tc hook: with tracing on, it remembers the packet. */
static __always_inline void trace_begin(struct __sk_buff *skb)
{
	if (TRACE_EVENTS && tracing())
		event_trace_begin(skb);
}
