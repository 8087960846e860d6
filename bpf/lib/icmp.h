/* Turning a packet into an ICMP destination-unreachable reply to its sender,
 * the way iptables' REJECT answers for a service without endpoints. */
#pragma once

#include "common.h"
#include "flow.h"
#include "csum.h"

#define ICMP_DEST_UNREACH	3
#define ICMP_PORT_UNREACH	3

/* What the reply quotes: the offending IP header (no options) and the first
 * eight bytes of its payload, as RFC 792 asks. */
#define ICMP_QUOTE_LEN		(sizeof(struct iphdr) + 8)
#define ICMP_REPLY_LEN		(ETH_HLEN + sizeof(struct iphdr) + 8 + ICMP_QUOTE_LEN)

struct icmp_unreach {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__u32 unused;
	__u8 quote[ICMP_QUOTE_LEN];
};

/* icmp4_unreach_reply rewrites skb in place into "port unreachable" from
 * from_addr back to the packet's source, with the Ethernet addresses
 * swapped. The caller sends it back where it came from. Only packets with
 * a plain 20-byte IP header are answered. Returns < 0 on failure. */
static __always_inline int icmp4_unreach_reply(struct __sk_buff *skb, __be32 from_addr)
{
	struct icmp_unreach icmp = { .type = ICMP_DEST_UNREACH, .code = ICMP_PORT_UNREACH };
	struct iphdr ip = {};
	struct ethhdr eth;
	__u8 mac[ETH_ALEN_BYTES];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, icmp.quote, ICMP_QUOTE_LEN) < 0)
		return -1;
	if ((icmp.quote[0] & 0x0f) != 5)
		return -1;

	ip.version = 4;
	ip.ihl = 5;
	ip.tos = 0xc0;	/* internetwork control, as the kernel's ICMP errors */
	ip.tot_len = bpf_htons(ICMP_REPLY_LEN - ETH_HLEN);
	ip.ttl = 64;
	ip.protocol = IPPROTO_ICMP;
	ip.saddr = from_addr;
	__builtin_memcpy(&ip.daddr, &icmp.quote[12], 4);	/* the original source */
	ip.check = csum_fold32(bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0));
	icmp.checksum = csum_fold32(bpf_csum_diff(0, 0, (__be32 *)&icmp, sizeof(icmp), 0));

	mac_copy(mac, eth.h_source);
	mac_copy(eth.h_source, eth.h_dest);
	mac_copy(eth.h_dest, mac);

	if (bpf_skb_change_tail(skb, ICMP_REPLY_LEN, 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(ip), &icmp, sizeof(icmp), 0) < 0)
		return -1;
	return 0;
}

/* The packet an ICMP error quotes: its IP header (without options, the only
 * kind translated) and the ports after it. */
struct icmp_quote4 {
	struct iphdr ip;
	__be16 sport;
	__be16 dport;
	__u32 off;		/* where the quoted IP header starts */
	__u32 end;		/* where the ICMP message ends (IP total length) */
};

/* icmp_quote4_load reads the TCP or UDP packet quoted by the ICMP error f.
 * Returns < 0 when there is none to translate. The quote must lie inside
 * the packet, not in bytes after it. */
static __always_inline int icmp_quote4_load(struct __sk_buff *skb, const struct flow4 *f, struct icmp_quote4 *q)
{
	__be16 tot_len, ports[2];

	q->off = f->l4_off + 8;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, tot_len), &tot_len, 2) < 0)
		return -1;
	q->end = ETH_HLEN + bpf_ntohs(tot_len);
	if (q->off + sizeof(q->ip) + sizeof(ports) > q->end ||
	    bpf_skb_load_bytes(skb, q->off, &q->ip, sizeof(q->ip)) < 0)
		return -1;
	if (q->ip.ihl != 5 || (q->ip.protocol != IPPROTO_TCP && q->ip.protocol != IPPROTO_UDP))
		return -1;
	if (bpf_skb_load_bytes(skb, q->off + sizeof(q->ip), ports, sizeof(ports)) < 0)
		return -1;
	q->sport = ports[0];
	q->dport = ports[1];
	return 0;
}

/* icmp_quote4_rewrite replaces one endpoint of the quoted packet (its
 * source when dst is 0): address and port, the quoted IP checksum, the
 * quoted L4 checksum where the quote holds it (UDP's always, TCP's when
 * more than 8 bytes are quoted; a UDP checksum of 0 stays 0), and the ICMP
 * checksum, which covers all of these and no pseudo header. */
static __always_inline int icmp_quote4_rewrite(struct __sk_buff *skb, const struct flow4 *f,
					       struct icmp_quote4 *q, int dst, __be32 addr, __be16 port)
{
	__u32 icmp_csum = f->l4_off + 2, l4 = q->off + sizeof(q->ip);
	__u32 csum_off = l4 + (q->ip.protocol == IPPROTO_TCP ? 16 : 6);
	__be32 old_addr = dst ? q->ip.daddr : q->ip.saddr;
	__be16 old_port = dst ? q->dport : q->sport;
	__u16 ip_check = q->ip.check, l4_check, old_l4;

	csum_replace4(&ip_check, old_addr, addr);
	if (bpf_l4_csum_replace(skb, icmp_csum, old_addr, addr, 4) < 0 ||
	    bpf_l4_csum_replace(skb, icmp_csum, q->ip.check, ip_check, 2) < 0 ||
	    bpf_l4_csum_replace(skb, icmp_csum, old_port, port, 2) < 0 ||
	    bpf_skb_store_bytes(skb, q->off + (dst ? 16 : 12), &addr, 4, 0) < 0 ||
	    bpf_skb_store_bytes(skb, q->off + offsetof(struct iphdr, check), &ip_check, 2, 0) < 0 ||
	    bpf_skb_store_bytes(skb, l4 + (dst ? 2 : 0), &port, 2, 0) < 0)
		return -1;
	if (csum_off + 2 <= q->end && bpf_skb_load_bytes(skb, csum_off, &old_l4, 2) == 0 &&
	    (old_l4 || q->ip.protocol == IPPROTO_TCP)) {
		l4_check = old_l4;
		csum_replace4(&l4_check, old_addr, addr);
		csum_replace2(&l4_check, old_port, port);
		if (q->ip.protocol == IPPROTO_UDP && !l4_check)
			l4_check = 0xffff;
		if (bpf_l4_csum_replace(skb, icmp_csum, old_l4, l4_check, 2) < 0 ||
		    bpf_skb_store_bytes(skb, csum_off, &l4_check, 2, 0) < 0)
			return -1;
	}
	q->ip.check = ip_check;
	if (dst) {
		q->ip.daddr = addr;
		q->dport = port;
	} else {
		q->ip.saddr = addr;
		q->sport = port;
	}
	return 0;
}
