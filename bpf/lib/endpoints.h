/* Lookups in the endpoints map: pods on this node by address. */
#pragma once

#include "maps.h"

static __always_inline struct endpoint_info *endpoint_lookup4(__be32 addr)
{
	struct endpoint_key key = { .family = AF_INET };

	key.addr[0] = addr;
	return bpf_map_lookup_elem(&endpoints, &key);
}

/* A pod may only speak from its own veth, with its own IP and MAC. */
static __always_inline int endpoint_owns(const struct endpoint_info *ep,
					 __u32 ifindex, const __u8 *mac)
{
	return ep->ifindex == ifindex && mac_equal(ep->mac, mac);
}
