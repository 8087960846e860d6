/* The VXLAN packet as podpath's nodes exchange it: what decapsulation
 * takes off (lib/decap.h) and encapsulation puts on (lib/peer.h). */
#pragma once

#include "common.h"

struct vxlan_header {
	__u8 flags;
	__u8 reserved[3];
	__be32 vni;		/* the network id in the upper 24 bits */
};

#define VXLAN_FLAG_VNI 0x08	/* the I flag: the VNI is valid */

/* Set by the loader on a node with the overlay: its VXLAN UDP port, in
 * network byte order; 0 without the overlay. */
volatile const __u16 overlay_port = 0;

/* The headers of an overlay packet up to the inner IP header's: the outer
 * Ethernet, IP (without options) and UDP headers, the VXLAN header and the
 * inner Ethernet header. Each part is checked through one pointer: the
 * verifier loses track of bounds checked apart and then reordered. */
struct overlay_outer {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
} __attribute__((packed));

struct overlay_headers {
	struct overlay_outer outer;
	struct vxlan_header vx;
	struct ethhdr eth;
	struct iphdr ip;
} __attribute__((packed));

/* What encapsulation puts and decapsulation takes off: everything between
 * the outer Ethernet header and the inner IP header (50 bytes). */
#define OVERLAY_POP_LEN (__builtin_offsetof(struct overlay_headers, ip) - ETH_HLEN)
