/* Network policy, at the two places a pod's packets pass: leaving it
 * (egress, checked in forward4 for what from_pod sends) and entering it
 * (ingress, checked where a packet is delivered into a pod: forward4 and
 * to_pod).
 *
 * Maps: identities, ipcache, policy_rules, policy_ranges, policy_ct,
 * policy_frags (maps.h).
 *
 * A pod with any ENDPOINT_F_POLICY_* flag has its connections tracked in
 * both directions. A packet of a tracked connection, or a reply to one,
 * passes; the first packet of a new connection is looked up in the policy
 * when its direction is enforced (otherwise it passes) and, allowed,
 * starts tracking. Per packet that is a hash lookup or two. Per new
 * connection: the peer's identity (a hash lookup) and its CIDR's (one in
 * the ipBlock trie), then at most three hash lookups per identity (the
 * port, every port of the protocol, every protocol) for the peer's, its
 * CIDR's and any identity: a cost that does not grow with the number of
 * rules, pods or policies. Only a pod with port ranges also has its range
 * trie looked up, once per identity. */
#pragma once

#include "common.h"
#include "maps.h"
#include "flow.h"
#include "conntrack.h"
#include "frag.h"

/* The working state of one decision, off the stack: from_pod's frame and
 * policy_denies4's together must stay under 512 bytes. */
struct policy_scratch {
	struct policy_ct_key k;		/* the packet's connection */
	struct policy_ct_key r;		/* k's reverse */
	struct policy_key pk;
	struct frag_ports_key fk;
	struct frag_ports fp;
	struct policy_ct_entry ne;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct policy_scratch);
	__uint(max_entries, 1);
} policy_scratch SEC(".maps");

/* identity_of4 is the identity of an address: the node's own (node_addrs)
 * are the host, pods have theirs (identities), the rest is the world. */
static __always_inline __u32 identity_of4(__be32 addr)
{
	struct endpoint_key nk = { .family = AF_INET };
	struct identity_key k = { .addr = addr };
	struct ipcache_entry *e;

	nk.addr[0] = addr;
	if (bpf_map_lookup_elem(&node_addrs, &nk))
		return IDENTITY_HOST;
	e = bpf_map_lookup_elem(&identities, &k);
	return e ? e->identity : IDENTITY_WORLD;
}

/* cidr_identity_of4 is the identity of the longest ipBlock CIDR holding
 * addr, or IDENTITY_ANY when none does. */
static __always_inline __u32 cidr_identity_of4(__be32 addr)
{
	struct ipcache_key k = { .prefixlen = 32, .addr = addr };
	struct ipcache_entry *e = bpf_map_lookup_elem(&ipcache, &k);

	return e ? e->identity : IDENTITY_ANY;
}

/* policy_match looks up what allows k's identity the port dport of proto:
 * a rule of that port, of every port of proto, of every protocol, or
 * (ranges: the pod has port ranges) a range holding dport. */
static __always_inline struct policy_entry *policy_match(struct policy_key *k, __u8 proto, __be16 dport,
							 int ranges)
{
	struct policy_entry *pe;

	k->prefixlen = POLICY_PREFIX_FULL;
	k->proto = proto;
	k->dport = dport;
	pe = bpf_map_lookup_elem(&policy_rules, k);
	if (pe)
		return pe;
	if (ranges) {
		pe = bpf_map_lookup_elem(&policy_ranges, k);
		if (pe)
			return pe;
	}
	k->prefixlen = POLICY_PREFIX_ANY_PORT;
	k->dport = 0;
	pe = bpf_map_lookup_elem(&policy_rules, k);
	if (pe)
		return pe;
	k->prefixlen = POLICY_PREFIX_ANY_PROTO;
	k->proto = 0;
	return bpf_map_lookup_elem(&policy_rules, k);
}

/* policy_ct_touch refreshes a live entry's expiry (at most once a second)
 * and says whether it is live. */
static __always_inline int policy_ct_touch(struct policy_ct_entry *e, __u8 proto, __u8 tcp_flags, __u64 now)
{
	__u64 expires;

	if (!e || e->expires < now)
		return 0;
	if (DRY_RUN)
		return 1;
	ct_merge_tcp_flags(&e->tcp_flags, tcp_flags);
	expires = now + ct_lifetime(proto, e->tcp_flags);
	if (expires > e->expires + CT_REFRESH || expires < e->expires)
		e->expires = expires;
	return 1;
}

/* policy_tracked says whether k is a packet of a connection allowed in
 * its direction (1), or a reply to one allowed the other way (2; r: room
 * for the reply's key, the entry's), or neither (0). reply_first looks
 * for the reply first: in a direction the pod's policy does not enforce,
 * its packets are mostly replies (a server's), and one lookup finds them. */
static __always_inline int policy_tracked(const struct policy_ct_key *k, struct policy_ct_key *r,
					  __u8 tcp_flags, __u64 now, int reply_first)
{
	__builtin_memset(r, 0, sizeof(*r));
	r->saddr = k->daddr;
	r->daddr = k->saddr;
	r->sport = k->dport;
	r->dport = k->sport;
	r->proto = k->proto;
	r->direction = !k->direction;
	if (reply_first && policy_ct_touch(bpf_map_lookup_elem(&policy_ct, r), k->proto, tcp_flags, now))
		return 2;
	if (policy_ct_touch(bpf_map_lookup_elem(&policy_ct, k), k->proto, tcp_flags, now))
		return 1;
	if (!reply_first && policy_ct_touch(bpf_map_lookup_elem(&policy_ct, r), k->proto, tcp_flags, now))
		return 2;
	return 0;
}

/* policy_quoted4 makes k the packet an ICMP error is about, turned to
 * travel the error's way: an error is related to a connection when the
 * packet it quotes is one of the connection's, sent by the error's
 * receiver. Returns < 0 when the quote is cut short. */
static __always_inline int policy_quoted4(struct __sk_buff *skb, const struct flow4 *f, struct policy_ct_key *k)
{
	struct iphdr in;
	__be16 ports[2];
	__u8 echo[6];
	__u32 off = f->l4_off + 8;

	if (bpf_skb_load_bytes(skb, off, &in, sizeof(in)) < 0)
		return -1;
	off += (in.ihl & 0xf) * 4;
	k->saddr = in.daddr;
	k->daddr = in.saddr;
	k->proto = in.protocol;
	k->sport = k->dport = 0;
	switch (in.protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		k->sport = ports[1];
		k->dport = ports[0];
		break;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(skb, off, echo, sizeof(echo)) < 0)
			return -1;
		/* The quoted request's identifier is its "source port"; turned
		 * around, the destination one (flow4_parse_icmp). */
		if (echo[0] == ICMP_ECHO_TYPE)
			__builtin_memcpy(&k->dport, &echo[4], 2);
		else if (echo[0] == ICMP_ECHOREPLY_TYPE)
			__builtin_memcpy(&k->sport, &echo[4], 2);
		break;
	}
	return 0;
}

/* policy_denies4 decides the packet at ETH_HLEN, in its final addresses,
 * for the pod it leaves (POLICY_EGRESS: the source) or enters
 * (POLICY_INGRESS: the destination), whose endpoint flags are flags: when
 * the pod's policy of that direction does not apply, the packet passes
 * and only its connection is tracked, for the replies to pass the other
 * direction's.
 * Returns 0 to pass, 1 to drop. Not inlined: one copy serves every
 * caller, its stack frame its own. */
static __noinline int policy_denies4(struct __sk_buff *skb, __u32 dir, __u32 flags)
{
	struct policy_scratch *s;
	struct policy_entry *pe;
	struct frag_ports *first;
	struct iphdr *ip;
	struct flow4 f;
	__u32 zero = 0, peer, cidr, addr, ranges, tracked;
	__u32 enforce = flags & (dir == POLICY_INGRESS ? ENDPOINT_F_POLICY_INGRESS : ENDPOINT_F_POLICY_EGRESS);
	__u64 now = bpf_ktime_get_ns();

	s = bpf_map_lookup_elem(&policy_scratch, &zero);
	if (!s)
		return 1;
	__builtin_memset(s, 0, sizeof(*s));
	if (skb_linearize_headers(skb, ETH_HLEN + sizeof(*ip)) < 0)
		return 1;
	ip = header_at(skb, ETH_HLEN, struct iphdr);
	if (!ip || flow4_parse(skb, ip, &f) < 0)
		return 1;
	s->fk.saddr = f.saddr;
	s->fk.daddr = f.daddr;
	s->fk.id = f.ip_id;
	s->fk.proto = f.proto;

	if (f.icmp == FLOW_ICMP_ERROR) {
		s->k.direction = dir;
		if (policy_quoted4(skb, &f, &s->k) == 0 && policy_tracked(&s->k, &s->r, 0, now, 0))
			return 0;
		/* Unrelated: decided as any other ICMP packet. */
		__builtin_memset(&s->k, 0, sizeof(s->k));
	}
	s->k.saddr = f.saddr;
	s->k.daddr = f.daddr;
	s->k.sport = f.sport;
	s->k.dport = f.dport;
	s->k.proto = f.proto;
	s->k.direction = dir;
	if (f.frag == FLOW_FRAG_LATER) {
		/* Its first fragment's connection, or nothing. */
		first = bpf_map_lookup_elem(&policy_frags, &s->fk);
		if (!first || first->expires < now)
			return 1;
		s->k.sport = first->sport;
		s->k.dport = first->dport;
		return !policy_tracked(&s->k, &s->r, 0, now, 0);
	}
	/* A SYN without ACK opens a connection: the policy decides it as it
	 * is now, even on the tuple of a tracked or closed one (a client
	 * reusing its port), so every new connection meets a changed policy. */
	if (f.proto != IPPROTO_TCP || (f.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN) {
		tracked = policy_tracked(&s->k, &s->r, f.tcp_flags, now, !enforce);
		/* A reset ends the connection: its entry goes, making room at
		 * once rather than when the LRU evicts it. */
		if (tracked && (f.tcp_flags & TCP_FLAG_RST) && !DRY_RUN)
			bpf_map_delete_elem(&policy_ct, tracked == 1 ? &s->k : &s->r);
		if (tracked)
			goto allowed;
	}

	if (enforce) {
		addr = dir == POLICY_INGRESS ? f.saddr : f.daddr;
		peer = identity_of4(addr);
		/* The node reaches its own pods, whatever their policy (kubelet's
		 * probes). */
		if (!(peer == IDENTITY_HOST && dir == POLICY_INGRESS)) {
			ranges = flags & ENDPOINT_F_POLICY_RANGES;
			cidr = cidr_identity_of4(addr);
			s->pk.endpoint = dir == POLICY_INGRESS ? f.daddr : f.saddr;
			s->pk.direction = dir;
			pe = 0;
			/* No rule names the host or the world: their addresses
			 * are allowed by CIDR or by every identity. */
			if (peer >= IDENTITY_FIRST_USER) {
				s->pk.identity = peer;
				pe = policy_match(&s->pk, f.proto, f.dport, ranges);
			}
			if (!pe && cidr != IDENTITY_ANY) {
				s->pk.identity = cidr;
				pe = policy_match(&s->pk, f.proto, f.dport, ranges);
			}
			if (!pe) {
				s->pk.identity = IDENTITY_ANY;
				pe = policy_match(&s->pk, f.proto, f.dport, ranges);
			}
			trace_note(TRACE_POLICY, peer, pe != 0, cidr);
			if (!pe)
				return 1;
			if (!DRY_RUN)
				__sync_fetch_and_add(&pe->packets, 1);
		}
	}
	s->ne.tcp_flags = f.tcp_flags;
	s->ne.expires = now + ct_lifetime(f.proto, f.tcp_flags);
	map_insert(&policy_ct, &s->k, &s->ne, BPF_ANY);
allowed:
	if (f.frag == FLOW_FRAG_FIRST) {
		s->fp.expires = now + FRAG_LIFETIME;
		s->fp.sport = s->k.sport;
		s->fp.dport = s->k.dport;
		map_insert(&policy_frags, &s->fk, &s->fp, BPF_ANY);
	}
	return 0;
}
