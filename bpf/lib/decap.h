/* VXLAN packets from other nodes, decapsulated where they arrive: on the
 * uplink, by from_netdev, instead of by the kernel's VXLAN device behind
 * the host's UDP socket. */
#pragma once

#include "common.h"
#include "csum.h"
#include "parse.h"
#include "flow.h"
#include "peer.h"
#include "endpoints.h"
#include "vxlan.h"

/* overlay_decap4's result: the hook the packet is to be decided as, with
 * the sending pod's network (or 0) above DECAP_NET_SHIFT. */
#define DECAP_HOOK_MASK 0xff
#define DECAP_NET_SHIFT 8

/* overlay_decap4 takes the outer headers off a VXLAN packet another node
 * sent to this one: IPv4 without options or fragmentation, from an address
 * the peers map names as a node's, to an address of this node (node_addrs)
 * and the overlay port, with a valid VNI and an IPv4 packet for a pod of
 * this node inside (what is for the node itself keeps arriving on the
 * VXLAN device, whose routes and reverse-path checks the stack has).
 * What remains is the outer Ethernet header (the uplink's MAC as
 * destination) and the inner IP packet, to be decided as from_overlay
 * decides it: the result is HOOK_FROM_OVERLAY with the network the VNI
 * carries. Anything else is left as it came and decided as from the
 * uplink (HOOK_FROM_NETDEV): GSO packets (bpf_skb_adjust_room would have
 * to rewrite their tunnel GSO type, which older kernels cannot),
 * fragments, outer headers with a wrong IP checksum or any UDP checksum
 * (the stack verifies them, and drops what is damaged), unknown senders,
 * inner frames that are not IPv4 or not for a local pod: the stack hands
 * those to the VXLAN device, and from_overlay decides them there.
 *
 * It spares a decapsulated packet the host's UDP socket lookup, the VXLAN
 * device's receive, its GRO cell (another softirq pass) and a second tc
 * program.
 *
 * A global function: the verifier checks it once, on its own, and its
 * caller sees its result as any number, so netdev_ingress is walked once
 * for both hooks, where two constants would have it walked twice. */
__noinline int overlay_decap4(struct __sk_buff *skb)
{
	struct overlay_outer *o;
	struct overlay_headers *h;
	struct endpoint_key node = { .family = AF_INET };
	__be32 saddr;
	__u32 vni;

	if (skb->gso_size || skb->protocol != bpf_htons(ETH_P_IP))
		return HOOK_FROM_NETDEV;
	if (skb_linearize_headers(skb, sizeof(*o)) < 0)
		return HOOK_FROM_NETDEV;
	o = header_at(skb, 0, struct overlay_outer);
	if (!o)
		return HOOK_FROM_NETDEV;
	if (o->ip.version != 4 || o->ip.ihl != 5 || o->ip.protocol != IPPROTO_UDP ||
	    (o->ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)) || o->udp.dest != overlay_port)
		return HOOK_FROM_NETDEV;
	if (bpf_ntohs(o->ip.tot_len) < sizeof(*h) - ETH_HLEN || ETH_HLEN + bpf_ntohs(o->ip.tot_len) > skb->len)
		return HOOK_FROM_NETDEV;
	/* The stack checks what it takes apart; so does this. A UDP
	 * checksum is left to the stack to verify: podpath's nodes send
	 * none, as the kernel's VXLAN devices by default. */
	if (o->udp.check ||
	    csum_fold32(bpf_csum_diff(0, 0, (__be32 *)((__u8 *)o + ETH_HLEN), sizeof(o->ip), 0)))
		return HOOK_FROM_NETDEV;
	node.addr[0] = o->ip.daddr;
	saddr = o->ip.saddr;
	if (!bpf_map_lookup_elem(&node_addrs, &node))
		return HOOK_FROM_NETDEV;

	if (skb_linearize_headers(skb, sizeof(*h)) < 0)
		return HOOK_FROM_NETDEV;
	h = header_at(skb, 0, struct overlay_headers);
	if (!h)
		return HOOK_FROM_NETDEV;
	if (h->vx.flags != VXLAN_FLAG_VNI || h->eth.h_proto != bpf_htons(ETH_P_IP))
		return HOOK_FROM_NETDEV;
	vni = bpf_ntohl(h->vx.vni) >> 8;
	if (!endpoint_lookup4(h->ip.daddr))
		return HOOK_FROM_NETDEV;

	if (!peer_node4(saddr))
		return HOOK_FROM_NETDEV;
	if (bpf_skb_adjust_room(skb, -(int)OVERLAY_POP_LEN, BPF_ADJ_ROOM_MAC, 0) < 0)
		return HOOK_FROM_NETDEV;
	return HOOK_FROM_OVERLAY | (vni_network(vni) << DECAP_NET_SHIFT);
}
