/* Turning a packet into an ICMP destination-unreachable reply to its sender,
 * the way iptables' REJECT answers for a service without endpoints. */
#pragma once

#include "common.h"
#include "flow.h"

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

static __always_inline __u16 csum_fold32(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

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
