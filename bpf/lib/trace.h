/* The dry run behind `podpath trace`: the same programs built a second
 * time with PODPATH_DRY_RUN, run with BPF_PROG_RUN on a crafted packet
 * against the node's live maps. DRY_RUN is a constant, so each write to a
 * shared map below is either compiled in (the attached programs) or out
 * (the dry run): a dry run reads what the node knows and changes none of
 * it. What it decides is noted in trace_log, a map of the run's own that
 * the attached programs do not have. */
#pragma once

#ifdef PODPATH_DRY_RUN
#define DRY_RUN 1
#else
#define DRY_RUN 0
#endif

/* TRACE_EVENTS: whether the programs can raise trace events (lib/events.h).
 * Not in the dry run; not in the benchmark's reference build of from_pod
 * (PODPATH_NO_TRACE), against which the cost of tracing switched off is
 * measured. */
#if defined(PODPATH_DRY_RUN) || defined(PODPATH_NO_TRACE)
#define TRACE_EVENTS 0
#else
#define TRACE_EVENTS 1
#endif

/* What a note says; a, b and c as listed (addresses in network order). */
enum trace_kind {
	TRACE_VERDICT = 1,	/* a: reason, b: hook (every counted packet) */
	TRACE_REDIRECT = 2,	/* a: ifindex, b: enum trace_redirect, c: next hop */
	TRACE_SERVICE = 3,	/* a: service id, b: backends, c: algorithm */
	TRACE_CT_FLOW = 4,	/* a: backend id, b: service id: a flow conntrack knows */
	TRACE_CT_REPLY = 5,	/* a: backend id, b: service id, c: frontend address */
	TRACE_LB_NEW = 6,	/* a: backend id, b: service id: a new flow's choice */
	TRACE_SNAT_FLOW = 7,	/* a: node address, b: port: the flow's mapping */
	TRACE_SNAT_NEW = 8,	/* a: node address, b: port: a new mapping */
	TRACE_SNAT_REPLY = 9,	/* a: pod address, b: port: a masqueraded flow's reply */
	TRACE_PEER = 10,	/* a: node address, b: peer flags: another node's */
	TRACE_TUNNEL = 11,	/* a: remote node address, b: VNI: encapsulated */
	TRACE_FRAG = 12,	/* a: decision: a later fragment, as its first went */
	TRACE_FIB = 13,		/* a: ifindex, b: bpf_fib_lookup's result */
	TRACE_ENDPOINT = 14,	/* a: ifindex: the destination is a pod of this node */
	TRACE_POLICY = 15,	/* a: the peer's identity, b: 1 allowed, 0 not,
				 * c: its CIDR's identity (0: none): a new
				 * connection looked up in the policy */
};

enum trace_redirect {
	TRACE_REDIRECT_PEER = 1,	/* into the namespace of ifindex's peer */
	TRACE_REDIRECT_EGRESS = 2,	/* out of ifindex */
	TRACE_REDIRECT_NEIGH = 3,	/* out of ifindex, L2 from the neighbour table */
};

struct trace_note {
	__u32 kind;		/* enum trace_kind */
	__u32 a;
	__u32 b;
	__u32 c;
};

#define TRACE_NOTES 32

/* The run's log. The run's caller fills in what a BPF_PROG_RUN packet
 * cannot carry (the tunnel a decapsulated packet came through), zeroes
 * count, runs one program, and reads the notes. */
struct trace_log {
	__u32 tunnel_remote;	/* outer source address, 0 when none */
	__u32 tunnel_vni;
	__u32 count;
	__u32 pad;
	struct trace_note notes[TRACE_NOTES];
};

#ifdef PODPATH_DRY_RUN
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct trace_log);
	__uint(max_entries, 1);
} trace_log SEC(".maps");

static __always_inline struct trace_log *trace_log_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&trace_log, &zero);
}

/* Inlined: as a function of its own it is a frame below every other, and
 * 6.1's verifier counts such frames into call chains they are not part of
 * (from_pod's dry run came to 568 bytes of stack). */
static __always_inline int trace_note(__u32 kind, __u32 a, __u32 b, __u32 c)
{
	struct trace_log *l = trace_log_get();
	__u32 i;

	if (!l)
		return 0;
	i = l->count;
	if (i >= TRACE_NOTES)
		return 0;
	l->notes[i].kind = kind;
	l->notes[i].a = a;
	l->notes[i].b = b;
	l->notes[i].c = c;
	l->count = i + 1;
	return 0;
}
#else
#define trace_note(kind, a, b, c) ((void)0)
#endif

/* map_insert is bpf_map_update_elem for maps the dry run must not change:
 * there it only answers as the update would (-EEXIST for BPF_NOEXIST on a
 * key that exists, else success). */
static __always_inline long map_insert(void *map, const void *key, const void *value, __u64 flags)
{
	if (DRY_RUN)
		return flags == BPF_NOEXIST && bpf_map_lookup_elem(map, key) ? -EEXIST : 0;
	return bpf_map_update_elem(map, key, value, flags);
}

static __always_inline long map_remove(void *map, const void *key)
{
	if (DRY_RUN)
		return 0;
	return bpf_map_delete_elem(map, key);
}

/* Redirects, noted for the dry run's caller: a BPF_PROG_RUN packet goes
 * nowhere, so the run says where it would have. */
static __always_inline long redirect_peer(__u32 ifindex)
{
	trace_note(TRACE_REDIRECT, ifindex, TRACE_REDIRECT_PEER, 0);
	return bpf_redirect_peer(ifindex, 0);
}

static __always_inline long redirect_egress(__u32 ifindex)
{
	trace_note(TRACE_REDIRECT, ifindex, TRACE_REDIRECT_EGRESS, 0);
	return bpf_redirect(ifindex, 0);
}

static __always_inline long redirect_neigh(__u32 ifindex, struct bpf_redir_neigh *nh, int nh_len)
{
	trace_note(TRACE_REDIRECT, ifindex, TRACE_REDIRECT_NEIGH, nh ? nh->ipv4_nh : 0);
	return bpf_redirect_neigh(ifindex, nh, nh_len, 0);
}

/* tunnel_key_get reads the tunnel a decapsulated packet came through; in
 * the dry run, the one the caller put in the log. */
static __always_inline long tunnel_key_get(struct __sk_buff *skb, struct bpf_tunnel_key *key, __u32 size)
{
#ifdef PODPATH_DRY_RUN
	struct trace_log *l = trace_log_get();

	if (!l || !l->tunnel_remote)
		return -1;
	key->remote_ipv4 = bpf_ntohl(l->tunnel_remote);
	key->tunnel_id = l->tunnel_vni;
	return 0;
#else
	return bpf_skb_get_tunnel_key(skb, key, size, 0);
#endif
}
