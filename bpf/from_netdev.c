// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_netdev: tc ingress on the node's uplink, i.e. every packet that
 * arrives from the network. Decides, in order:
 *   0. with the overlay, a VXLAN packet another node sent to this one loses
 *      its outer headers here and is decided as from_overlay decides what
 *      the VXLAN device hands it (lib/decap.h);
 *   1. non-IPv4 traffic (ARP, IPv6) and anything not for a service or a pod
 *      goes to the host stack untouched: the node stays reachable;
 *   2. malformed IPv4 headers are dropped with a reason;
 *   3. a reply to a pod's masqueraded flow (to_netdev), or an ICMP error
 *      about one, gets the pod's address and port back; a reply to a
 *      frontend's flow masqueraded towards a backend elsewhere gets the
 *      client back, then the frontend as its source;
 *   4. a packet to an externally reachable frontend (NodePort, externalIP,
 *      LoadBalancer IP, hostPort) gets a backend (conntrack keeps the choice
 *      for the flow) as destination; with no backend it is answered with
 *      ICMP port unreachable, as kube-proxy's REJECT does; a backend that is
 *      not a pod of this node gets the flow from the node's address and a
 *      port of its own (SNAT), as kube-proxy's masquerade does;
 *   5. an ICMP error about a service flow gets the addresses its receiver
 *      knows; the later fragments of a datagram translated here get what
 *      its first fragment got (others, the node's own included, pass as
 *      they are);
 *   6. a destination that is a pod on this node is delivered straight into
 *      the pod's namespace with bpf_redirect_peer; another node's pod or
 *      address is routed or encapsulated towards that node (lib/peer.h);
 *      the rest goes to the stack.
 * Replies of these flows leave through from_pod, which restores the
 * frontend as their source. */
#include "lib/netdev.h"
#include "lib/decap.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	__u32 r = HOOK_FROM_NETDEV;

	/* Without the overlay, the verifier walks netdev_ingress with a
	 * constant hook, as from_overlay does. */
	if (overlay_port)
		r = overlay_decap4(skb);
	return netdev_ingress(skb, r & DECAP_HOOK_MASK, r >> DECAP_NET_SHIFT);
}
