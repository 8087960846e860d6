/* Isolation between networks (maps.h: networks, network_reach). */
#pragma once

#include "maps.h"

static __always_inline int network_reaches_all(__u32 id)
{
	struct network_info *n = bpf_map_lookup_elem(&networks, &id);

	return n && (n->flags & NETWORK_F_REACHES_ALL);
}

static __always_inline int network_reach_declared(__u32 from, __u32 to)
{
	struct network_pair k = { .from = from, .to = to };

	return bpf_map_lookup_elem(&network_reach, &k) != 0;
}

/* network_allows says whether a pod of network a and a pod of network b may
 * exchange packets: the same network, either one none (0: an endpoint
 * written before networks, or by hand), either one reaching all, or a
 * reach declared by either towards the other. A network with no entry
 * reaches nothing but itself. Symmetric, so the replies of whatever one
 * side may send pass too. */
static __always_inline int network_allows(__u32 a, __u32 b)
{
	if (a == b || !a || !b)
		return 1;
	return network_reaches_all(a) || network_reaches_all(b) ||
	       network_reach_declared(a, b) || network_reach_declared(b, a);
}
