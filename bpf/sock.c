// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sock: the socket address hooks of a cgroup v2 (cgroup/connect4,
 * cgroup/sendmsg4, cgroup/recvmsg4, cgroup/getpeername4), attached to the
 * cgroup the node's own processes run in. They balance services for those
 * processes at the socket, once per connect() (or per datagram of an
 * unconnected UDP socket), instead of translating every packet. Decides:
 *   1. a socket outside the node's network namespace (a pod's, another
 *      simulated node's) is left alone: pods are balanced per packet by
 *      from_pod, and the services maps belong to this node only;
 *   2. connect() of a TCP or UDP socket, and sendmsg() of an unconnected UDP
 *      socket, to a service frontend (internal scope, or NodePort on a node
 *      address) goes to a backend instead: the address is rewritten before
 *      the kernel routes it, and (socket, backend) -> frontend is recorded;
 *   3. a frontend without backends fails the call with EPERM, the only
 *      error a cgroup hook can return (kube-proxy's REJECT gives
 *      ECONNREFUSED instead; both fail at once rather than time out);
 *   4. recvmsg() of a UDP reply from a recorded backend, and getpeername()
 *      of a connected socket, report the frontend, so the application only
 *      ever sees the address it asked for. */
#include "lib/common.h"
#include "lib/lb.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Verdicts of a socket address hook. */
#define SYS_REJECT	0
#define SYS_PROCEED	1

/* Set by the loader: the cookie of the node's network namespace, the only
 * one whose sockets are translated. 0 translates every namespace. */
volatile const __u64 node_netns_cookie = 0;

static __always_inline int in_node_netns(struct bpf_sock_addr *ctx)
{
	return !node_netns_cookie || bpf_get_netns_cookie(ctx) == node_netns_cookie;
}

/* Maglev hashes the socket: its cookie is a counter, so spread it over 32
 * bits (Fibonacci hashing). Random and round robin ignore the hash. */
static __always_inline __u32 sock_hash(__u64 cookie)
{
	return (cookie * 0x9E3779B97F4A7C15ULL) >> 32;
}

/* sock4_record remembers which frontend a socket reached a backend through,
 * writing only when the entry is new or changed: an unconnected UDP socket
 * comes here with every datagram. */
static __always_inline int sock4_record(__u64 cookie, const struct backend *b,
					const struct svc_info *svc,
					__be32 frontend, __be16 frontend_port)
{
	struct sock_rev_key k = {};
	struct sock_rev_value v = {}, *cur;

	k.cookie = cookie;
	k.addr[0] = b->addr[0];
	k.port = b->port;
	k.family = AF_INET;
	cur = bpf_map_lookup_elem(&sock_rev_nat, &k);
	if (cur && cur->addr[0] == frontend && cur->port == frontend_port &&
	    cur->svc_id == svc->id)
		return 0;
	v.addr[0] = frontend;
	v.port = frontend_port;
	v.family = AF_INET;
	v.svc_id = svc->id;
	return bpf_map_update_elem(&sock_rev_nat, &k, &v, BPF_ANY);
}

/* sock4_xlate_fwd points a socket address at a backend when it is a service
 * frontend. client is the socket's source address, 0 when not bound yet:
 * it keys sessionAffinity, so unbound sockets of the node share one. */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, __be32 client)
{
	__be32 frontend = ctx->user_ip4;
	__be16 frontend_port = (__be16)ctx->user_port;
	__u8 proto = ctx->protocol;
	struct svc_info *svc;
	struct backend *b;
	__u64 cookie;
	__u32 id;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SYS_PROCEED;
	svc = svc_lookup4_node(frontend, frontend_port, proto, SVC_SCOPE_INTERNAL);
	if (!svc)
		return SYS_PROCEED;

	cookie = bpf_get_socket_cookie(ctx);
	id = lb_select4(svc, client, sock_hash(cookie));
	if (!id)
		return SYS_REJECT;
	b = backend_lookup(id);
	if (!b || b->family != AF_INET)
		return SYS_REJECT;
	/* Without the record the application would see the backend as its
	 * peer or as the source of replies, and drop them: fail instead. */
	if (sock4_record(cookie, b, svc, frontend, frontend_port) < 0)
		return SYS_REJECT;
	ctx->user_ip4 = b->addr[0];
	ctx->user_port = (__u32)b->port;
	return SYS_PROCEED;
}

/* sock4_xlate_rev shows a recorded backend as the frontend it stands for. */
static __always_inline void sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct sock_rev_key k = {};
	struct sock_rev_value *v;

	k.cookie = bpf_get_socket_cookie(ctx);
	k.addr[0] = ctx->user_ip4;
	k.port = (__be16)ctx->user_port;
	k.family = AF_INET;
	v = bpf_map_lookup_elem(&sock_rev_nat, &k);
	if (!v)
		return;
	ctx->user_ip4 = v->addr[0];
	ctx->user_port = (__u32)v->port;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	if (!in_node_netns(ctx))
		return SYS_PROCEED;
	return sock4_xlate_fwd(ctx, ctx->sk->src_ip4);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	__be32 client;

	if (!in_node_netns(ctx))
		return SYS_PROCEED;
	/* The source the datagram will leave with: IP_PKTINFO's, else the
	 * socket's own when bound. */
	client = ctx->msg_src_ip4;
	if (!client)
		client = ctx->sk->src_ip4;
	return sock4_xlate_fwd(ctx, client);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	if (in_node_netns(ctx))
		sock4_xlate_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	if (in_node_netns(ctx))
		sock4_xlate_rev(ctx);
	return SYS_PROCEED;
}
