/* Why a packet was handled the way it was. Every program counts each packet
 * under exactly one reason and the hook it was seen at. The user-space side
 * reads these names from BTF, so this enum is the one place they are defined:
 * values named REASON_DROP_* are drops, everything else is a verdict that lets
 * the packet live. Append only; never renumber (counters are pinned). */
#pragma once

enum reason {
	REASON_UNSPEC = 0,
	REASON_FORWARD_LOCAL = 1,	/* redirected into a pod on this node */
	REASON_TO_STACK = 2,		/* handed to the host's network stack */
	REASON_ARP_TO_STACK = 3,	/* a pod's own ARP, checked and passed */
	REASON_SVC_REJECT = 4,		/* service without backends: turned into an
					 * ICMP port unreachable back to the client */
	REASON_FORWARD_FIB = 5,		/* routed out by FIB lookup and redirect */
	REASON_PASS_TRANSLATED = 6,	/* service DNAT done at XDP; tc delivers */
	REASON_SNAT = 7,		/* left the node masqueraded */
	REASON_SVC_REPLY = 8,		/* a service flow's reply the stack routed
					 * into a pod: source restored to the frontend;
					 * or an ICMP error about the flow leaving the
					 * uplink, its quote restored likewise */
	REASON_PASS = 9,		/* let through as it came (to_pod; to_netdev, to_overlay:
				 * a pod's packet from_pod sent to another node) */
	REASON_FORWARD_ROUTED = 10,	/* to another node's pod, routed out of the
					 * uplink (direct routing) */
	REASON_FORWARD_TUNNEL = 11,	/* to another node, encapsulated (VXLAN) */
	REASON_TO_STACK_MTU = 12,	/* to another node but larger than the path
					 * takes: the stack fragments it or answers
					 * "fragmentation needed" */

	REASON_DROP_TRUNCATED = 64,	/* shorter than the headers it claims */
	REASON_DROP_BAD_IP_HEADER = 65,	/* IHL below 5 or not IPv4 */
	REASON_DROP_SPOOFED_IP = 66,	/* source IP is not this endpoint's */
	REASON_DROP_SPOOFED_MAC = 67,	/* source MAC is not this endpoint's */
	REASON_DROP_SPOOFED_ARP = 68,	/* ARP sender is not this endpoint */
	REASON_DROP_UNSUPPORTED_L3 = 69,/* neither IPv4 nor ARP (IPv6 pods come later) */
	REASON_DROP_TTL_EXCEEDED = 70,	/* TTL would reach zero when routed */
	REASON_DROP_NO_BACKEND = 71,	/* service without backends, and no reply is
					 * sent (a later fragment of a rejected
					 * datagram) */
	REASON_DROP_CT_FULL = 72,	/* conntrack entry could not be created */
	REASON_DROP_NAT_FAILED = 73,	/* header rewrite failed */
	REASON_DROP_FIB_FAILED = 74,	/* no route for a translated reply */
	REASON_DROP_NAT_NO_PORT = 75,	/* SNAT: every port tried was taken */
	REASON_DROP_NAT_MAP_FULL = 76,	/* SNAT: no room for another mapping */
	REASON_DROP_FRAG_UNKNOWN = 77,	/* a later IP fragment whose datagram's first
					 * fragment was not seen here: its translation
					 * is unknown */
	REASON_DROP_UNKNOWN_PEER = 78,	/* arrived encapsulated from an address
					 * that is no known node's */
	REASON_DROP_NO_PEER = 79,	/* sent into the overlay to an address no
					 * node owns */
	REASON_DROP_TUNNEL_FAILED = 80,	/* the tunnel key could not be read or set */
	REASON_DROP_REJECT_FAILED = 81,	/* service without backends, and this packet
					 * cannot be answered with an ICMP reject (IP
					 * options, or too short to quote) */
	REASON_DROP_BACKEND_GONE = 82,	/* the backend chosen for a new flow has no
					 * entry (removed while a slot still named it) */
	REASON_DROP_NETWORK_ISOLATED = 83, /* between pods of two networks that
					 * do not reach each other */
	REASON_DROP_POLICY_INGRESS = 84, /* the receiving pod's policy does not
					 * allow the packet's connection */
	REASON_DROP_POLICY_EGRESS = 85,	/* the sending pod's policy does not
					 * allow the packet's connection */
};

/* Every reason from here on is a drop. */
#define REASON_DROP_FIRST REASON_DROP_TRUNCATED

/* Where a packet was seen. */
enum hook {
	HOOK_FROM_POD = 0,	/* tc ingress of a pod's host-side veth */
	HOOK_TO_POD = 1,	/* tc egress of a pod's host-side veth */
	HOOK_FROM_NETDEV = 2,	/* tc ingress of the node's uplink */
	HOOK_TO_NETDEV = 3,	/* tc egress of the node's uplink */
	HOOK_XDP = 4,		/* XDP on the node's uplink */
	HOOK_FROM_OVERLAY = 5,	/* tc ingress of the node's VXLAN device */
	HOOK_TO_OVERLAY = 6,	/* tc egress of the node's VXLAN device */
};
