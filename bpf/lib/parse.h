/* Header access that never reads past the end of the packet. */
#pragma once

#include "common.h"
#include "reasons.h"

#define ARPHRD_ETHER 1

/* An ARP packet for IPv4 over Ethernet, the only kind a pod may send.
 * (linux/if_arp.h drags in libc headers, so the header is spelled here.) */
struct arp_ipv4 {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
	__u8 sha[6];
	__be32 sip;
	__u8 tha[6];
	__be32 tip;
} __attribute__((packed));

/* Make the first len bytes directly readable. Headers of a locally built
 * packet are almost always linear already; this only pulls when they are not. */
static __always_inline int skb_linearize_headers(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (skb->len < len)
		return -1;
	return bpf_skb_pull_data(skb, len);
}

/* Bounds-checked pointer to a header at offset off. */
#define header_at(skb, off, type)                                              \
	({                                                                     \
		void *__data = (void *)(long)(skb)->data;                      \
		void *__end = (void *)(long)(skb)->data_end;                   \
		type *__h = __data + (off);                                    \
		((void *)(__h + 1) > __end) ? (type *)0 : __h;                 \
	})

/* ipv4_check validates the IPv4 header at ETH_HLEN of a frame whose
 * ethertype says IPv4: REASON_UNSPEC when usable, else the drop reason.
 * The header is linear and readable afterwards. */
static __always_inline enum reason ipv4_check(struct __sk_buff *skb)
{
	struct iphdr *ip;
	__u32 hlen;

	if (skb_linearize_headers(skb, ETH_HLEN + sizeof(*ip)) < 0)
		return REASON_DROP_TRUNCATED;
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!ip)
		return REASON_DROP_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return REASON_DROP_BAD_IP_HEADER;
	hlen = ip->ihl * 4;
	if (bpf_ntohs(ip->tot_len) < hlen)
		return REASON_DROP_BAD_IP_HEADER;
	if (ETH_HLEN + bpf_ntohs(ip->tot_len) > skb->len)
		return REASON_DROP_TRUNCATED;
	return REASON_UNSPEC;
}
