/* Service load balancing: frontend lookup and backend selection. Nothing
 * here touches the packet, so the socket-level balancer shares it. */
#pragma once

#include "maps.h"
#include "flow.h"

/* Set by the loader from the node configuration: the Maglev table size,
 * a prime, equal to the inner maps' max_entries. */
volatile const __u32 maglev_table_size = MAGLEV_DEFAULT_SIZE;

static __always_inline struct svc_info *svc_lookup4(__be32 addr, __be16 port, __u8 proto, __u8 scope)
{
	struct svc_key k = {};

	k.addr[0] = addr;
	k.port = port;
	k.proto = proto;
	k.family = AF_INET;
	k.scope = scope;
	return bpf_map_lookup_elem(&services, &k);
}

/* svc_lookup4_node also tries the wildcard frontend (NodePort, hostPort) when
 * the destination is one of this node's addresses. */
static __always_inline struct svc_info *svc_lookup4_node(__be32 addr, __be16 port, __u8 proto, __u8 scope)
{
	struct endpoint_key nk = { .family = AF_INET };
	struct svc_info *svc;

	svc = svc_lookup4(addr, port, proto, scope);
	if (svc)
		return svc;
	nk.addr[0] = addr;
	if (!bpf_map_lookup_elem(&node_addrs, &nk))
		return NULL;
	return svc_lookup4(0, port, proto, scope);
}

static __always_inline struct backend *backend_lookup(__u32 id)
{
	return bpf_map_lookup_elem(&backends, &id);
}

static __always_inline __u32 slot_backend(__u32 svc_id, __u32 slot)
{
	struct slot_key k = { .svc_id = svc_id, .slot = slot };
	__u32 *id = bpf_map_lookup_elem(&svc_slots, &k);

	return id ? *id : 0;
}

static __always_inline __u32 lb_pick(const struct svc_info *svc, __u32 hash)
{
	__u32 n = *(volatile const __u16 *)&svc->backends, id = svc->id;
	__u32 *next, *inner_id, turn;
	void *table;

	if (!n)
		return 0;
	switch (svc->algo) {
	case LB_ROUND_ROBIN:
		next = bpf_map_lookup_elem(&svc_rr, &id);
		if (!next)
			return slot_backend(id, bpf_get_prandom_u32() % n + 1);
		turn = *next + 1;
		if (!DRY_RUN)
			*next = turn;
		return slot_backend(id, turn % n + 1);
	case LB_MAGLEV:
		table = bpf_map_lookup_elem(&maglev, &id);
		if (table && maglev_table_size) {
			__u32 idx = hash % maglev_table_size;

			inner_id = bpf_map_lookup_elem(table, &idx);
			if (inner_id && *inner_id)
				return *inner_id;
		}
		/* No table (yet): still consistent per flow, only not minimally
		 * disruptive when backends change. */
		return slot_backend(id, hash % n + 1);
	default:
		return slot_backend(id, bpf_get_prandom_u32() % n + 1);
	}
}

/* lb_select4 chooses the backend of a new flow from client to svc, or
 * returns 0 when the service has none. hash is the flow's hash (Maglev). */
static __always_inline __u32 lb_select4(const struct svc_info *svc, __be32 client, __u32 hash)
{
	struct affinity_key ak = {};
	struct affinity_value av = {}, *cur = 0;
	struct backend *b;
	__u64 now = 0;
	__u32 id;

	if (!svc->backends)
		return 0;
	if (svc->flags & SVC_F_AFFINITY) {
		ak.svc_id = svc->id;
		ak.family = AF_INET;
		ak.client[0] = client;
		now = bpf_ktime_get_ns();
		cur = bpf_map_lookup_elem(&affinity, &ak);
		if (cur && now - cur->last_used < (__u64)svc->affinity_timeout * 1000000000ULL) {
			b = backend_lookup(cur->backend_id);
			if (b && !(b->flags & BACKEND_F_TERMINATING)) {
				if (!DRY_RUN)
					cur->last_used = now;
				return cur->backend_id;
			}
		}
	}
	id = lb_pick(svc, hash);
	/* The count read by lb_pick may predate a shrink whose extra slots are
	 * already gone: the count is written first, so a second pick sees the
	 * new one and only slots that exist. */
	if (!id && svc->backends)
		id = lb_pick(svc, hash);
	/* Unless svc is the element an update has replaced since the lookup
	 * (an update links a new element; this one keeps the old count): slot
	 * 1 exists in every version of a frontend that has a backend. */
	if (!id && svc->backends)
		id = slot_backend(svc->id, 1);
	if (id && (svc->flags & SVC_F_AFFINITY)) {
		av.last_used = now;
		av.backend_id = id;
		/* A client's first connections can race on two CPUs: the entry
		 * is created only where none exists, and the loser takes the
		 * winner's backend. One found stale above is replaced. */
		if (!cur) {
			if ((int)map_insert(&affinity, &ak, &av, BPF_NOEXIST) != -EEXIST)
				return id;
			cur = bpf_map_lookup_elem(&affinity, &ak);
			if (cur && (b = backend_lookup(cur->backend_id)) && !(b->flags & BACKEND_F_TERMINATING))
				return cur->backend_id;
		}
		map_insert(&affinity, &ak, &av, BPF_ANY);
	}
	return id;
}
