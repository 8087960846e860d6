/* Address and port rewrites with their checksum fixes. */
#pragma once

#include "common.h"
#include "csum.h"
#include "flow.h"
#include "parse.h"

static __always_inline __u32 l4_csum_off(__u8 proto)
{
	return proto == IPPROTO_TCP ? 16 : 6;
}

/* ip4_set_addr replaces the source (dst 0) or destination address in the IP
 * header only, with its checksum: for packets whose L4 header is not there
 * (later fragments) or whose checksum covers no addresses (ICMP). */
static __always_inline int ip4_set_addr(struct __sk_buff *skb, int dst, __be32 old_addr, __be32 new_addr)
{
	struct iphdr *ip;

	if (old_addr == new_addr)
		return 0;
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!ip)
		return -1;
	csum_replace4(&ip->check, old_addr, new_addr);
	if (dst)
		ip->daddr = new_addr;
	else
		ip->saddr = new_addr;
	return 0;
}

/* l4_ports_at is the linear TCP or UDP header's first 8 bytes (ports,
 * then the UDP checksum or the TCP sequence number) at l4_off, or NULL
 * when they are not in the linear part. */
static __always_inline __be16 *l4_ports_at(struct __sk_buff *skb, __u32 l4_off)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	/* ETH_HLEN + at most 60 bytes of IP header: the bound tells the
	 * verifier the offset is one. */
	__be16 *p = data + (l4_off & 0x7f);

	return (void *)(p + 4) > end ? (__be16 *)0 : p;
}

/* nat4_rewrite replaces one endpoint of the tuple (the source when dst is 0,
 * else the destination): address in the IP header, port in the TCP or UDP
 * header, and both checksums incrementally. A UDP datagram sent without a
 * checksum keeps none. Packet pointers are invalid afterwards.
 *
 * The L4 checksum goes through bpf_l4_csum_replace, which knows what the
 * kernel has still to do with it (a locally sent segment's checksum is
 * finished by the device: only the pseudo header's change applies). The
 * fields and the IP header's checksum are written in place, without a
 * helper call each. */
static __always_inline int nat4_rewrite(struct __sk_buff *skb, const struct flow4 *f, int dst,
					__be32 old_addr, __be32 new_addr,
					__be16 old_port, __be16 new_port)
{
	__u32 port_off = f->l4_off + (dst ? 2 : 0);
	__u32 csum_off = f->l4_off + l4_csum_off(f->proto);
	__u64 l4_flags = BPF_F_PSEUDO_HDR;
	int fix_l4 = f->has_ports;
	int set_addr = old_addr != new_addr;
	int set_port = f->has_ports && old_port != new_port;
	__be16 *ports;
	__u16 udp_csum;

	if (f->proto == IPPROTO_UDP) {
		ports = l4_ports_at(skb, f->l4_off);
		if (ports)
			udp_csum = ports[3];
		else if (bpf_skb_load_bytes(skb, csum_off, &udp_csum, sizeof(udp_csum)) < 0)
			return -1;
		if (!udp_csum)
			fix_l4 = 0;
		l4_flags |= BPF_F_MARK_MANGLED_0;
	}
	if (set_addr && fix_l4 &&
	    bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr, l4_flags | 4) < 0)
		return -1;
	if (set_port && fix_l4 &&
	    bpf_l4_csum_replace(skb, csum_off, old_port, new_port, (l4_flags & BPF_F_MARK_MANGLED_0) | 2) < 0)
		return -1;
	if (ip4_set_addr(skb, dst, old_addr, new_addr) < 0)
		return -1;
	if (set_port) {
		ports = l4_ports_at(skb, f->l4_off);
		if (!ports)
			return bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0);
		if (dst)
			ports[1] = new_port;
		else
			ports[0] = new_port;
	}
	return 0;
}
