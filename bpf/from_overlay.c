// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_overlay: tc ingress on the node's VXLAN device (external mode), i.e.
 * every packet another node encapsulated towards this one, decapsulated by
 * the kernel. Decides, in order:
 *   1. a packet whose outer source is no known node's address is dropped:
 *      only nodes podpath knows of may send into pods;
 *   2. the rest is decided as for packets from the uplink (lib/netdev.h):
 *      replies of masqueraded flows and of service flows get their
 *      addresses back, a pod on this node gets the packet straight into its
 *      namespace with bpf_redirect_peer unless the sending pod's network,
 *      which the VNI carries, does not reach the pod's (lib/network.h), and
 *      what is for the node itself goes to the stack, as addressed to this
 *      host. */
#include <linux/if_packet.h>
#include "lib/netdev.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* from_known_peer says whether the packet came from a node in the peers
 * map, and sets *net to the sending pod's network when the VNI carries one
 * (lib/peer.h). Not inlined: the tunnel key would otherwise sit in
 * from_overlay's frame, which forward_peer4's is added to. */
static __noinline int from_known_peer(struct __sk_buff *skb, __u32 *net)
{
	struct bpf_tunnel_key key = {};

	if (tunnel_key_get(skb, &key, __builtin_offsetof(struct bpf_tunnel_key, local_ipv4)) < 0)
		return -1;
	if (!peer_node4(bpf_htonl(key.remote_ipv4)))
		return 0;
	*net = vni_network(key.tunnel_id);
	return 1;
}

SEC("tc")
int from_overlay(struct __sk_buff *skb)
{
	__u32 net = 0;
	int known = from_known_peer(skb, &net);

	if (known < 0)
		return verdict(skb, HOOK_FROM_OVERLAY, REASON_DROP_TUNNEL_FAILED, TC_ACT_SHOT);
	if (!known)
		return verdict(skb, HOOK_FROM_OVERLAY, REASON_DROP_UNKNOWN_PEER, TC_ACT_SHOT);
	/* The node's own frames into the overlay (the device is NOARP) carry
	 * its device's MAC as destination, not this one's: what the stack
	 * gets here is for this host all the same. */
	bpf_skb_change_type(skb, PACKET_HOST);
	return netdev_ingress(skb, HOOK_FROM_OVERLAY, net);
}
