/* Sending a packet on by the node's routing table, without the stack. */
#pragma once

#include "common.h"

/* The flags of every FIB lookup: BPF_FIB_LOOKUP_SKIP_NEIGH where the
 * kernel has it (6.3, and 6.1 stable releases that took it back; the
 * loader sets it by loader.Features.FIBSkipNeigh).
 * podpath never takes the neighbour's MAC from the lookup: the packet
 * leaves by bpf_redirect_neigh towards the next hop the lookup names, so
 * the neighbour subsystem fills the L2 header, and an entry gone stale
 * (a node whose MAC changed under the same address) is probed again as
 * for the node's own packets. Taken from the lookup, a stale MAC would be
 * used for as long as the entry stays, which, below gc_thresh1 entries,
 * is for ever. The flag only spares the lookup a neighbour search whose
 * answer is not used. */
volatile const __u32 fib_lookup_flags = 0;

/* fib_next_hop4 makes the redirect towards the next hop a successful FIB
 * lookup p named (a gateway, or the destination itself on a connected
 * route). Returns 0 when that next hop is not IPv4 (an IPv4 route via an
 * IPv6 gateway). */
static __always_inline int fib_next_hop4(const struct bpf_fib_lookup *p, struct bpf_redir_neigh *nh)
{
	if (p->family != AF_INET)
		return 0;
	nh->nh_family = AF_INET;
	nh->ipv4_nh = p->ipv4_dst;
	return 1;
}

/* fib_redirect4 looks the destination up in the FIB and redirects the packet
 * out of the resulting device, letting the kernel fill in the L2 header
 * from its neighbour table. Used for translated replies whose source is now
 * a node address: handed to the stack, they would be dropped as martians.
 * Returns TC_ACT_REDIRECT, or TC_ACT_SHOT with *ok = 0 when there is no
 * usable route (forwarding disabled, unreachable). */
static __always_inline int fib_redirect4(struct __sk_buff *skb, __be32 saddr, __be32 daddr, int *ok)
{
	struct bpf_redir_neigh nh = {};
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
	rc = bpf_fib_lookup(skb, &p, sizeof(p), fib_lookup_flags);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		*ok = 0;
		return TC_ACT_SHOT;
	}
	*ok = 1;
	trace_note(TRACE_FIB, p.ifindex, rc, 0);
	/* Via an IPv6 gateway: the kernel routes the packet itself. */
	if (!fib_next_hop4(&p, &nh))
		return redirect_neigh(p.ifindex, 0, 0);
	return redirect_neigh(p.ifindex, &nh, sizeof(nh));
}
