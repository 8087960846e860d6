/* Reaching other nodes' pods: routed towards the node (direct routing) or
 * encapsulated on the node's VXLAN device (overlay). */
#pragma once

#include "common.h"
#include "maps.h"
#include "counters.h"
#include "endpoints.h"
#include "flow.h"
#include "csum.h"
#include "fib.h"
#include "vxlan.h"

/* A node's overlay device has MAC 0e:70 followed by its IPv4 address, so a
 * frame encapsulated here can be addressed to the device that receives it.
 * Its source is 0e:71:00:00:00:00, no device's: the receiving device drops
 * a frame from its own address as a loop. */
static __always_inline void overlay_macs(struct ethhdr *eth, __be32 node)
{
	const __u8 *a = (const __u8 *)&node;

	eth->h_dest[0] = 0x0e;
	eth->h_dest[1] = 0x70;
	eth->h_dest[2] = a[0];
	eth->h_dest[3] = a[1];
	eth->h_dest[4] = a[2];
	eth->h_dest[5] = a[3];
	eth->h_source[0] = 0x0e;
	eth->h_source[1] = 0x71;
	eth->h_source[2] = 0;
	eth->h_source[3] = 0;
	eth->h_source[4] = 0;
	eth->h_source[5] = 0;
}

/* A pod's packet that from_pod sends on to another node carries this mark
 * from the redirect to the egress hook it meets first (to_netdev on the
 * uplink, to_overlay on the overlay device), which takes it off and lets
 * the packet pass: peers are never masqueraded, so nothing is left to
 * decide, and the hook spares the lookups that would find that out. The
 * mark lives only between the redirect and that hook: no netfilter hook,
 * routing decision or other namespace sees it. */
#define MARK_PEER_FORWARDED 0x50500001

/* overlay_outer4 says whether f is the node's own VXLAN traffic leaving
 * on the uplink (to_netdev): UDP from the node's address to the overlay
 * port, nothing there for podpath to translate. Arriving, such packets
 * are from_netdev's to decapsulate (lib/decap.h). */
static __always_inline int overlay_outer4(const struct flow4 *f, __be32 node)
{
	return overlay_port && f->proto == IPPROTO_UDP && !f->frag && f->saddr == node &&
	       f->dport == overlay_port;
}

static __always_inline int peer_forwarded(struct __sk_buff *skb)
{
	if (skb->mark != MARK_PEER_FORWARDED)
		return 0;
	skb->mark = 0;
	return 1;
}

static __always_inline struct peer *peer_lookup4(__be32 addr)
{
	struct peer_key k = { .prefixlen = 32 + 32, .family = AF_INET };

	k.addr[0] = addr;
	return bpf_map_lookup_elem(&peers, &k);
}

/* peer_node4 says whether addr is another node's own address (a
 * PEER_F_NODE entry of its own, not a pod CIDR that holds it): only those
 * may send this node encapsulated packets. */
static __always_inline int peer_node4(__be32 addr)
{
	struct peer *p = peer_lookup4(addr);

	return p && (p->flags & PEER_F_NODE) && p->node_addr[0] == addr;
}

/* vni_network is the sending pod's network a VNI carries (lib/network.h),
 * 0 for a node's VNI. */
static __always_inline __u32 vni_network(__u32 vni)
{
	return vni >= NETWORK_VNI_BASE ? vni : 0;
}

/* Set by the loader on a node with the overlay: the node's own address
 * (network byte order), the outer source of what from_pod encapsulates
 * itself; 0 leaves all encapsulation to the overlay device. */
volatile const __u32 overlay_addr = 0;

/* A program that encapsulates pods' packets itself defines
 * OVERLAY_ENCAP_SELF 1 before its includes (from_pod). The others leave
 * encapsulation to the overlay device, whose egress program (to_overlay)
 * also gives a frontend's packets the node's address. */
#ifndef OVERLAY_ENCAP_SELF
#define OVERLAY_ENCAP_SELF 0
#endif

/* tunnel_vni4 is the VNI a packet from saddr carries to p: a pod of a
 * network sends the network's id (NETWORK_VNI_BASE and up), so the
 * receiving node can keep networks apart; any other sender the node's. */
static __always_inline __u32 tunnel_vni4(const struct peer *p, __be32 saddr)
{
	struct endpoint_info *src = endpoint_lookup4(saddr);

	return src && src->network >= NETWORK_VNI_BASE ? src->network : p->vni;
}

/* peer_set_tunnel4 gives the packet its encapsulation towards p: the
 * overlay device's xmit reads the outer destination and VNI from it. The
 * key's size stops before local_ipv4 (6.0): older kernels accept only
 * their own size, and every kernel the shorter one. */
static __always_inline int peer_set_tunnel4(struct __sk_buff *skb, const struct peer *p, __u32 vni)
{
	struct bpf_tunnel_key key = {};

	key.remote_ipv4 = bpf_ntohl(p->node_addr[0]);
	key.tunnel_id = vni;
	key.tunnel_ttl = 64;
	trace_note(TRACE_TUNNEL, p->node_addr[0], key.tunnel_id, 0);
	return (int)bpf_skb_set_tunnel_key(skb, &key, __builtin_offsetof(struct bpf_tunnel_key, local_ipv4),
					   BPF_F_ZERO_CSUM_TX);
}

/* The outer UDP source port spreads a node's flows over the receiver's
 * queues, as the kernel's VXLAN device does: the flow's hash, scaled into
 * the default ephemeral range. */
#define OVERLAY_SPORT_MIN 32768
#define OVERLAY_SPORT_MAX 61000

static __always_inline __be16 overlay_sport(struct __sk_buff *skb)
{
	__u32 hash = bpf_get_hash_recalc(skb);

	hash ^= hash << 16;
	return bpf_htons((__u16)((((__u64)hash * (OVERLAY_SPORT_MAX - OVERLAY_SPORT_MIN)) >> 32) +
				 OVERLAY_SPORT_MIN));
}

/* The room encapsulation makes, described as the overlay device's xmit
 * leaves an encapsulated packet: outer IPv4 and UDP, then VXLAN and the
 * inner Ethernet header (its length in the flags), the inner protocol
 * Ethernet; the packet's inner headers are set from its own, so that a
 * device offloading the inner checksum finds them.
 * BPF_F_ADJ_ROOM_ENCAP_L2_ETH is 5.11's: older kernels refuse the flags
 * (the loader then leaves overlay_addr 0: loader.Features.OverlayEncap). */
#define OVERLAY_ENCAP_FLAGS                                                                \
	(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN) | \
	 BPF_F_ADJ_ROOM_ENCAP_L2_ETH)

/* overlay_encap4's answer when the packet is to take the overlay device
 * instead, untouched:
 *   - a GSO packet: the device's output segments it and, on a path the
 *     node knows to be narrower, fragments the segments, where the FIB's
 *     check cannot see a GSO packet's segment size;
 *   - no route to the node;
 *   - an outer packet larger than the route to the node takes (the device
 *     fragments it: the overlay's packets carry no DF);
 *   - a kernel that refuses the flags. */
#define ENCAP_USE_DEVICE 1

/* What the forwarding functions return for a packet to be dropped as one
 * whose encapsulation failed. */
#define FORWARD_PEER_TUNNEL_FAILED (-2)

/* overlay_encap4 encapsulates a pod's packet towards p in the program
 * itself and redirects it out of the uplink the FIB gives, towards the
 * next hop the FIB names (bpf_redirect_neigh: the neighbour subsystem
 * writes the outer Ethernet header), sparing it the overlay device's
 * xmit, its route and the node's IP output (the output hooks included)
 * and a second tc program. The packet is what the device would have made
 * of it: the outer source is the node's address, a random IP id and no
 * DF (the underlay may fragment what does not fit), TTL 64, the ECN bits
 * of the inner header, the UDP source port from the flow's hash, no UDP
 * checksum, the VNI vni. The inner Ethernet header (overlay_macs) is
 * already written; the outer one keeps its MACs until the redirect
 * replaces them. */
static __always_inline int overlay_encap4(struct __sk_buff *skb, const struct peer *p, __u32 vni,
					  __u8 tos, __u16 tot_len, enum reason *reason)
{
	struct bpf_redir_neigh nh = {};
	struct bpf_fib_lookup fib = {};
	struct overlay_headers *h;
	__be16 sport;
	__u32 csum;
	long rc;

	if (skb->gso_size)
		return ENCAP_USE_DEVICE;
	fib.family = AF_INET;
	fib.ipv4_src = overlay_addr;
	fib.ipv4_dst = p->node_addr[0];
	fib.ifindex = skb->ingress_ifindex;
	fib.tot_len = tot_len + OVERLAY_POP_LEN;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), fib_lookup_flags);
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) || !fib_next_hop4(&fib, &nh))
		return ENCAP_USE_DEVICE;
	sport = overlay_sport(skb);
	if (bpf_skb_adjust_room(skb, OVERLAY_POP_LEN, BPF_ADJ_ROOM_MAC, OVERLAY_ENCAP_FLAGS) < 0)
		return ENCAP_USE_DEVICE;
	h = header_at(skb, 0, struct overlay_headers);
	if (!h)
		return FORWARD_PEER_TUNNEL_FAILED;
	/* The room opens after the first 14 bytes, the inner Ethernet
	 * header: copied to the room's end, and the outer headers written
	 * in front of it. */
	__builtin_memcpy(&h->eth, &h->outer.eth, ETH_HLEN);
	h->outer.eth.h_proto = bpf_htons(ETH_P_IP);
	h->outer.ip.version = 4;
	h->outer.ip.ihl = 5;
	h->outer.ip.tos = (tos & 3) == 3 ? 2 : tos & 3;
	h->outer.ip.tot_len = bpf_htons(skb->len - ETH_HLEN);
	h->outer.ip.id = (__be16)bpf_get_prandom_u32();
	h->outer.ip.frag_off = 0;
	h->outer.ip.ttl = 64;
	h->outer.ip.protocol = IPPROTO_UDP;
	h->outer.ip.check = 0;
	h->outer.ip.saddr = overlay_addr;
	h->outer.ip.daddr = p->node_addr[0];
	csum = bpf_csum_diff(0, 0, (__be32 *)((__u8 *)h + ETH_HLEN), sizeof(h->outer.ip), 0);
	h->outer.ip.check = csum_fold32(csum);
	h->outer.udp.source = sport;
	h->outer.udp.dest = overlay_port;
	h->outer.udp.len = bpf_htons(skb->len - ETH_HLEN - sizeof(h->outer.ip));
	h->outer.udp.check = 0;
	h->vx.flags = VXLAN_FLAG_VNI;
	h->vx.reserved[0] = 0;
	h->vx.reserved[1] = 0;
	h->vx.reserved[2] = 0;
	h->vx.vni = bpf_htonl(vni << 8);
	trace_note(TRACE_TUNNEL, p->node_addr[0], vni, fib.ifindex);
	*reason = REASON_FORWARD_TUNNEL;
	return redirect_neigh(fib.ifindex, &nh, sizeof(nh));
}

/* forward_peer4 sends a packet on to the node p names, routed one hop: its
 * TTL is decremented when it is sent on, not when the stack gets it (and
 * routes it, TTL and all). Encapsulated: from_pod (OVERLAY_ENCAP_SELF)
 * puts the outer headers on itself (overlay_encap4) where it can;
 * otherwise the tunnel key is set and the packet redirected to the
 * overlay device's egress. Routed: the FIB's route towards the node gives
 * the device and the next hop, and bpf_redirect_neigh the MACs (lib/fib.h
 * says why never the lookup's). A packet larger than the path takes (not
 * GSO) goes to the stack instead, which fragments it or answers
 * "fragmentation needed" along its own routes to the peer.
 *
 * Returns the action with *reason, for the caller to count, or
 * FORWARD_PEER_TUNNEL_FAILED for the caller to drop: the counting, and the
 * events it may raise, run on the caller's frame, not on top of this one.
 *
 * The two ways are functions of their own, not inlined: the FIB's and the
 * tunnel's structures would otherwise sit in the frame of every program
 * that can reach a peer, on top of which from_netdev calls
 * snat_new_mapping4, and the two together passed the 512 bytes of stack a
 * call chain may use. Apart, neither frame passes 128 bytes, which 6.1's
 * verifier adds, rounded up to 32, to from_overlay's 360. */

static __noinline __attribute__((unused)) int forward_tunnel4(struct __sk_buff *skb, struct ethhdr *eth,
							      struct iphdr *ip, const struct peer *p,
							      enum reason *reason)
{
	__u16 tot_len = bpf_ntohs(ip->tot_len);
	__u32 vni;
	int ret;

	if (!skb->gso_size && p->mtu && tot_len > p->mtu) {
		*reason = REASON_TO_STACK_MTU;
		return TC_ACT_OK;
	}
	ipv4_decrease_ttl(ip);
	overlay_macs(eth, p->node_addr[0]);
	vni = tunnel_vni4(p, ip->saddr);
	if (OVERLAY_ENCAP_SELF && overlay_addr) {
		ret = overlay_encap4(skb, p, vni, ip->tos, tot_len, reason);
		if (ret != ENCAP_USE_DEVICE)
			return ret;
	}
	if (peer_set_tunnel4(skb, p, vni) < 0)
		return FORWARD_PEER_TUNNEL_FAILED;
	*reason = REASON_FORWARD_TUNNEL;
	return redirect_egress(p->ifindex);
}

static __noinline __attribute__((unused)) int forward_routed4(struct __sk_buff *skb, struct iphdr *ip,
							      const struct peer *p, enum reason *reason)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	__u16 tot_len = bpf_ntohs(ip->tot_len);
	long rc;

	fib.family = AF_INET;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = p->node_addr[0];
	fib.ifindex = skb->ingress_ifindex;
	if (!skb->gso_size)
		fib.tot_len = tot_len;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), fib_lookup_flags);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		if (!fib_next_hop4(&fib, &nh)) {
			*reason = REASON_TO_STACK;
			return TC_ACT_OK;
		}
		ipv4_decrease_ttl(ip);
		*reason = REASON_FORWARD_ROUTED;
		return redirect_neigh(fib.ifindex, &nh, sizeof(nh));
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		*reason = REASON_TO_STACK_MTU;
		return TC_ACT_OK;
	default:
		/* No usable route to the node here: the stack has the last
		 * word (and its own error). */
		*reason = REASON_TO_STACK;
		return TC_ACT_OK;
	}
}

static __always_inline int forward_peer4(struct __sk_buff *skb, struct ethhdr *eth, struct iphdr *ip,
					 const struct peer *p, enum reason *reason)
{
	if (p->flags & PEER_F_TUNNEL)
		return forward_tunnel4(skb, eth, ip, p, reason);
	return forward_routed4(skb, ip, p, reason);
}
