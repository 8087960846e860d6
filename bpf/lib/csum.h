/* Incremental checksum updates (RFC 1624). */
#pragma once

#include "common.h"

/* Decrement the TTL and patch the header checksum in place, as the kernel's
 * ip_decrease_ttl() does: TTL is the high byte of a 16-bit word, so the sum
 * grows by 0x0100 in network order. */
static __always_inline void ipv4_decrease_ttl(struct iphdr *ip)
{
	__u32 check = (__u32)ip->check;

	check += (__u32)bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
}
