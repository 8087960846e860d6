/* Sending a packet on by the node's routing table, without the stack. */
#pragma once

#include "common.h"

/* fib_redirect4 looks the destination up in the FIB and redirects the packet
 * out of the resulting device, letting the kernel fill in the L2 header
 * from its neighbour table. Used for translated replies whose source is now
 * a node address: handed to the stack, they would be dropped as martians.
 * Returns TC_ACT_REDIRECT, or TC_ACT_SHOT with *ok = 0 when there is no
 * usable route (forwarding disabled, unreachable). */
static __always_inline int fib_redirect4(struct __sk_buff *skb, __be32 saddr, __be32 daddr, int *ok)
{
	struct bpf_fib_lookup p = {};
	long rc;

	p.family = AF_INET;
	p.ipv4_src = saddr;
	p.ipv4_dst = daddr;
	p.ifindex = skb->ingress_ifindex;
	/* A GSO packet leaves as segments. Given its whole length, the lookup
	 * (5.12 and later) compares that with the MTU and answers "frag
	 * needed"; without one, the kernel checks the packet against the
	 * device as a GSO packet. */
	if (!skb->gso_size)
		p.tot_len = skb->len - ETH_HLEN;
	rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		*ok = 0;
		return TC_ACT_SHOT;
	}
	*ok = 1;
	trace_note(TRACE_FIB, p.ifindex, rc, 0);
	return redirect_neigh(p.ifindex, 0, 0);
}
