/* The five-tuple of an IPv4 packet, parsed once, decided on afterwards. */
#pragma once

#include "common.h"

#define IP_MF     0x2000
#define IP_OFFSET 0x1FFF

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define ICMP_ECHOREPLY_TYPE	0
#define ICMP_ECHO_TYPE		8

/* What translation did to a packet (lib/svc.h; SNAT: forward). */
enum svc_result {
	SVC_UNTOUCHED,	/* not service traffic */
	SVC_FORWARD,	/* destination rewritten to a backend */
	SVC_REPLY,	/* a reply: source rewritten to the frontend */
	SVC_REJECT,	/* no backend: the packet is now an ICMP error */
	SVC_DROP,	/* dropped; *reason says why */
};

/* Which piece of a datagram a packet is. */
enum flow_frag {
	FLOW_FRAG_NONE = 0,	/* a whole datagram */
	FLOW_FRAG_FIRST = 1,	/* offset 0, more to come: carries the L4 header */
	FLOW_FRAG_LATER = 2,	/* any other: no L4 header, no ports */
};

/* What kind of ICMP message a flow is. */
enum flow_icmp {
	FLOW_ICMP_NONE = 0,
	FLOW_ICMP_ECHO = 1,	/* request or reply: the identifier is its port */
	FLOW_ICMP_ERROR = 2,	/* unreachable, time exceeded, ...: quotes a packet */
};

struct flow4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;		/* ICMP echo: the identifier */
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 has_ports;		/* TCP or UDP with its ports readable */
	__u8 icmp;		/* enum flow_icmp */
	__u32 l4_off;		/* from the start of the frame */
	__be16 ip_id;		/* IP identification, for fragments */
	__u8 frag;		/* enum flow_frag */
	__u8 pad;
};

/* An echo request goes out with its identifier as the source "port", the
 * reply comes back with it as the destination one, so the two directions'
 * tuples mirror each other like TCP's and UDP's. */
static __always_inline int flow4_parse_icmp(struct __sk_buff *skb, struct flow4 *f, __u32 l3_end)
{
	struct {
		__u8 type;
		__u8 code;
		__u16 csum;
		__be16 id;
		__be16 seq;
	} icmp;

	if (f->l4_off + sizeof(icmp) > l3_end ||
	    bpf_skb_load_bytes(skb, f->l4_off, &icmp, sizeof(icmp)) < 0)
		return -1;
	switch (icmp.type) {
	case ICMP_ECHO_TYPE:
		f->sport = icmp.id;
		f->icmp = FLOW_ICMP_ECHO;
		break;
	case ICMP_ECHOREPLY_TYPE:
		f->dport = icmp.id;
		f->icmp = FLOW_ICMP_ECHO;
		break;
	case 3:		/* destination unreachable */
	case 11:	/* time exceeded */
	case 12:	/* parameter problem */
		f->icmp = FLOW_ICMP_ERROR;
		break;
	}
	return 0;
}

/* flow4_parse fills f from a validated IPv4 header at ETH_HLEN. Ports are
 * read only for TCP and UDP, and not from later fragments, which carry none
 * (lib/frag.h gives those their first fragment's translation). Returns < 0 when the L4 header is
 * cut short by the IP total length (bytes past it, such as Ethernet padding,
 * are not the packet's). */
static __always_inline int flow4_parse(struct __sk_buff *skb, const struct iphdr *ip, struct flow4 *f)
{
	__u32 l3_end = ETH_HLEN + bpf_ntohs(ip->tot_len);
	__be16 ports[2];

	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	f->l4_off = ETH_HLEN + ip->ihl * 4;
	f->has_ports = 0;
	f->icmp = FLOW_ICMP_NONE;
	f->tcp_flags = 0;
	f->sport = f->dport = 0;
	f->ip_id = ip->id;
	f->frag = FLOW_FRAG_NONE;
	if (ip->frag_off & bpf_htons(IP_OFFSET)) {
		f->frag = FLOW_FRAG_LATER;
		return 0;
	}
	if (ip->frag_off & bpf_htons(IP_MF))
		f->frag = FLOW_FRAG_FIRST;
	if (f->proto == IPPROTO_ICMP)
		return flow4_parse_icmp(skb, f, l3_end);
	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
		return 0;
	/* The whole header, checksum included, or nothing can be translated. */
	if (f->l4_off + (f->proto == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr)) > l3_end)
		return -1;
	if (bpf_skb_load_bytes(skb, f->l4_off, ports, sizeof(ports)) < 0)
		return -1;
	f->sport = ports[0];
	f->dport = ports[1];
	if (f->proto == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, f->l4_off + 13, &f->tcp_flags, 1) < 0)
		return -1;
	f->has_ports = 1;
	return 0;
}

/* A 32-bit hash of the tuple (murmur3's finalizer over a mix of the words):
 * the same flow always hashes the same, on every node. */
static __always_inline __u32 flow4_hash(const struct flow4 *f)
{
	__u32 h = f->saddr ^ (f->daddr * 0x9e3779b1u);

	h ^= ((__u32)f->sport << 16 | f->dport) * 0x85ebca6bu;
	h ^= f->proto;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}
