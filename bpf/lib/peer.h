/* Reaching other nodes' pods: routed towards the node (direct routing) or
 * encapsulated on the node's VXLAN device (overlay). */
#pragma once

#include "common.h"
#include "maps.h"
#include "counters.h"
#include "endpoints.h"
#include "flow.h"

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

/* Set by the loader on a node with the overlay: its VXLAN UDP port, in
 * network byte order; 0 without the overlay. */
volatile const __u16 overlay_port = 0;

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

/* peer_set_tunnel4 gives the packet its encapsulation towards p: the
 * overlay device's xmit reads the outer destination and VNI from it. A
 * packet from a pod of a network carries the network's id as its VNI
 * (NETWORK_VNI_BASE and up), so the receiving node can keep networks
 * apart; any other packet carries the node's VNI. The key's size stops
 * before local_ipv4 (6.0): older kernels accept only their own size, and
 * every kernel the shorter one. */
static __always_inline int peer_set_tunnel4(struct __sk_buff *skb, const struct peer *p, __be32 saddr)
{
	struct endpoint_info *src = endpoint_lookup4(saddr);
	struct bpf_tunnel_key key = {};

	key.remote_ipv4 = bpf_ntohl(p->node_addr[0]);
	key.tunnel_id = src && src->network >= NETWORK_VNI_BASE ? src->network : p->vni;
	key.tunnel_ttl = 64;
	trace_note(TRACE_TUNNEL, p->node_addr[0], key.tunnel_id, 0);
	return (int)bpf_skb_set_tunnel_key(skb, &key, __builtin_offsetof(struct bpf_tunnel_key, local_ipv4),
					   BPF_F_ZERO_CSUM_TX);
}

/* forward_peer4 sends a routed (TTL already decremented) packet on to the
 * node p names. Encapsulated: the tunnel key is set and the packet
 * redirected to the overlay device's egress. Routed: the FIB's route
 * towards the node gives the device and, with the neighbour known, the
 * MACs; otherwise bpf_redirect_neigh resolves the node's. A packet larger
 * than the path takes (not GSO) goes to the stack instead, which
 * fragments it or answers "fragmentation needed" along its own routes to
 * the peer.
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
#define FORWARD_PEER_TUNNEL_FAILED (-2)

static __noinline __attribute__((unused)) int forward_tunnel4(struct __sk_buff *skb, struct ethhdr *eth,
							      struct iphdr *ip, const struct peer *p,
							      enum reason *reason)
{
	__u16 tot_len = bpf_ntohs(ip->tot_len);

	if (!skb->gso_size && p->mtu && tot_len > p->mtu) {
		*reason = REASON_TO_STACK_MTU;
		return TC_ACT_OK;
	}
	overlay_macs(eth, p->node_addr[0]);
	if (peer_set_tunnel4(skb, p, ip->saddr) < 0)
		return FORWARD_PEER_TUNNEL_FAILED;
	*reason = REASON_FORWARD_TUNNEL;
	return redirect_egress(p->ifindex);
}

static __noinline __attribute__((unused)) int forward_routed4(struct __sk_buff *skb, struct ethhdr *eth,
							      struct iphdr *ip, const struct peer *p,
							      enum reason *reason)
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
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN_BYTES);
		__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN_BYTES);
		*reason = REASON_FORWARD_ROUTED;
		return redirect_egress(fib.ifindex);
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		nh.nh_family = AF_INET;
		nh.ipv4_nh = p->node_addr[0];
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
	return forward_routed4(skb, eth, ip, p, reason);
}
