/* Address and port rewrites with their checksum fixes. */
#pragma once

#include "common.h"
#include "flow.h"

#define IP_CSUM_OFF	(ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF	(ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF	(ETH_HLEN + offsetof(struct iphdr, daddr))

static __always_inline __u32 l4_csum_off(__u8 proto)
{
	return proto == IPPROTO_TCP ? 16 : 6;
}

/* ip4_set_addr replaces the source (dst 0) or destination address in the IP
 * header only, with its checksum: for packets whose L4 header is not there
 * (later fragments) or whose checksum covers no addresses (ICMP). */
static __always_inline int ip4_set_addr(struct __sk_buff *skb, int dst, __be32 old_addr, __be32 new_addr)
{
	if (old_addr == new_addr)
		return 0;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, dst ? IP_DST_OFF : IP_SRC_OFF, &new_addr, 4, 0);
}

/* nat4_rewrite replaces one endpoint of the tuple (the source when dst is 0,
 * else the destination): address in the IP header, port in the TCP or UDP
 * header, and both checksums incrementally. A UDP datagram sent without a
 * checksum keeps none. Packet pointers are invalid afterwards. */
static __always_inline int nat4_rewrite(struct __sk_buff *skb, const struct flow4 *f, int dst,
					__be32 old_addr, __be32 new_addr,
					__be16 old_port, __be16 new_port)
{
	__u32 addr_off = dst ? IP_DST_OFF : IP_SRC_OFF;
	__u32 port_off = f->l4_off + (dst ? 2 : 0);
	__u32 csum_off = f->l4_off + l4_csum_off(f->proto);
	__u64 l4_flags = BPF_F_PSEUDO_HDR;
	int fix_l4 = f->has_ports;
	__u16 udp_csum;

	if (f->proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, csum_off, &udp_csum, sizeof(udp_csum)) < 0)
			return -1;
		if (!udp_csum)
			fix_l4 = 0;
		l4_flags |= BPF_F_MARK_MANGLED_0;
	}
	if (old_addr != new_addr) {
		if (fix_l4 && bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr, l4_flags | 4) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0) < 0)
			return -1;
	}
	if (f->has_ports && old_port != new_port) {
		if (fix_l4 && bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
						  (l4_flags & BPF_F_MARK_MANGLED_0) | 2) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0) < 0)
			return -1;
	}
	return 0;
}
