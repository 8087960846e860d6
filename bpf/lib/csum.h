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

/* csum_fold32 folds a 32-bit one's complement sum (bpf_csum_diff's) into
 * the 16-bit checksum field's value: 0 when the summed words already
 * held a correct checksum. */
static __always_inline __u16 csum_fold32(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

/* One's complement addition of two 16-bit words. */
static __always_inline __u16 csum16_add(__u16 a, __u16 b)
{
	__u32 s = (__u32)a + b;

	return (__u16)((s & 0xffff) + (s >> 16));
}

/* csum_replace2 patches a checksum for a 16-bit field changing from old to
 * new (RFC 1624, eqn. 3), where no skb helper is at hand (XDP). Fields are
 * compared in the byte order they have in the packet, which one's
 * complement arithmetic does not care about. */
static __always_inline void csum_replace2(__u16 *sum, __u16 old, __u16 new)
{
	*sum = ~csum16_add(csum16_add(~*sum, ~old), new);
}

static __always_inline void csum_replace4(__u16 *sum, __u32 old, __u32 new)
{
	csum_replace2(sum, (__u16)(old >> 16), (__u16)(new >> 16));
	csum_replace2(sum, (__u16)old, (__u16)new);
}
