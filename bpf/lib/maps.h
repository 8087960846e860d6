/* Maps shared by every program, pinned by name under the node's pin root.
 * Sizes here are defaults; the loader overrides max_entries from the node
 * configuration. Key and value layouts are the contract with user space:
 * changing one changes its BTF, and the loader refuses pinned maps whose
 * layout differs. */
#pragma once

#include "common.h"
#include "reasons.h"

#ifndef LIBBPF_PIN_BY_NAME
#define LIBBPF_PIN_BY_NAME 1
#endif

/* An address of either family; IPv4 lives in addr[0], the rest zero. */
struct endpoint_key {
	__u8 family;		/* AF_INET or AF_INET6 */
	__u8 pad[3];
	__u32 addr[4];		/* network byte order */
};

#define ENDPOINT_F_NONE 0
/* The pod is selected by a policy of that direction: what it receives
 * (sends) is dropped unless the policy map allows it, or it belongs to a
 * connection that was allowed (lib/policy.h). */
#define ENDPOINT_F_POLICY_INGRESS 1
#define ENDPOINT_F_POLICY_EGRESS 2
/* A new pod whose policy the agent has yet to compute: the CNI plugin sets
 * it with both directions above, so the pod sends and receives nothing
 * (but its node's probes) until the agent writes its policy. */
#define ENDPOINT_F_POLICY_PENDING 4
/* Some of the pod's rules are port ranges: they are in policy_ranges,
 * which is looked up only for such pods. */
#define ENDPOINT_F_POLICY_RANGES 8

/* A pod on this node, written by the CNI plugin at ADD. */
struct endpoint_info {
	__u32 ifindex;		/* host-side veth: redirect_peer target */
	__u32 flags;
	__u8 mac[6];		/* the pod's eth0 */
	__u8 node_mac[6];	/* the host-side veth, the pod's gateway MAC */
	__u32 network;		/* the network it was attached through (networks);
				 * 0: none, isolated from nothing */
	__u64 netns_cookie;	/* the pod's network namespace */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* Networks: the pods attached through one CNI network (a conflist's name)
 * form an isolation domain, as Docker's user-defined networks do. A
 * network's id is derived from its name, so it is the same on every node
 * without anything agreeing on it. Pods of two networks reach each other
 * only when either network reaches all others or a reach between the two
 * is declared (network_reach), both ways. */
#define NETWORK_F_REACHES_ALL 1	/* reaches and is reached by every network */
/* Network ids start here, and so do the VNIs that carry them across the
 * overlay: a node's own VNI is below. */
#define NETWORK_VNI_BASE (1U << 23)

struct network_info {
	__u32 flags;		/* NETWORK_F_* */
	char name[60];		/* the network's name, for people */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);	/* network id */
	__type(value, struct network_info);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} networks SEC(".maps");

/* A reach declared by network from towards network to. */
struct network_pair {
	__u32 from;
	__u32 to;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct network_pair);
	__type(value, __u32);	/* reserved, 0 */
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} network_reach SEC(".maps");

/* ---- Policy ----
 * Every address the node knows maps to a numeric identity: a pod's by its
 * exact address (identities), and the CIDRs of ipBlocks as themselves
 * (ipcache, longest prefix), so a pod's address has both. A pod's policy
 * is a set of (identity, direction, protocol, port) it may exchange
 * packets with: exact keys in a hash (policy_rules), port ranges as
 * prefixes in a trie (policy_ranges). Identities are the node's own
 * numbers: none travels with a packet. */
enum identity {
	IDENTITY_ANY = 0,		/* in a policy key: every identity */
	IDENTITY_HOST = 1,		/* this node's addresses */
	IDENTITY_WORLD = 2,		/* an address the node does not know */
	IDENTITY_REMOTE_NODE = 3,	/* another node's addresses */
	IDENTITY_FIRST_USER = 256,	/* label sets and CIDRs from here */
};

struct identity_key {
	__u32 addr;		/* network byte order */
};

struct ipcache_key {
	__u32 prefixlen;	/* LPM: bits of addr that count */
	__u32 addr;		/* network byte order */
};

struct ipcache_entry {
	__u32 identity;		/* enum identity, or one from 256 up */
	__u32 flags;		/* reserved, 0 */
};

/* Pods' addresses (this node's and others'), by their label set. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct identity_key);
	__type(value, struct ipcache_entry);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} identities SEC(".maps");

/* The CIDRs of ipBlocks and their excepts. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

enum policy_direction {
	POLICY_INGRESS = 0,
	POLICY_EGRESS = 1,
};

/* One allowed (peer, protocol, ports) of one pod in one direction.
 * prefixlen says what the key covers: every protocol and port (up to
 * direction), every port of proto (up to proto), one port (the whole
 * key): such keys are exact, in policy_rules. A port range is split into
 * prefixes of dport, each a key of policy_ranges. */
struct policy_key {
	__u32 prefixlen;	/* LPM: bits from endpoint on */
	__u32 endpoint;		/* the pod's address, network byte order */
	__u32 identity;		/* the peer's; IDENTITY_ANY for all */
	__u8 direction;		/* enum policy_direction */
	__u8 proto;		/* IPPROTO_* */
	__u16 dport;		/* network byte order */
};

#define POLICY_PREFIX_ANY_PROTO (32 + 32 + 8)
#define POLICY_PREFIX_ANY_PORT (POLICY_PREFIX_ANY_PROTO + 8)
#define POLICY_PREFIX_FULL (POLICY_PREFIX_ANY_PORT + 16)

struct policy_entry {
	__u64 packets;		/* connections the entry allowed */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_ranges SEC(".maps");

/* A connection a policy allowed, in the direction it was allowed: its
 * packets, and its replies (the reverse tuple, the other direction), pass
 * the endpoint without another lookup. */
struct policy_ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;		/* ICMP echo: the identifier, as in flow4 */
	__u16 dport;
	__u8 proto;
	__u8 direction;		/* enum policy_direction */
	__u8 pad[2];
};

struct policy_ct_entry {
	__u64 expires;		/* ktime ns */
	__u8 tcp_flags;		/* seen so far */
	__u8 pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct policy_ct_key);
	__type(value, struct policy_ct_entry);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_ct SEC(".maps");

/* The ports of a datagram's first fragment, for its later ones, which
 * carry none, to be checked as the same connection. */
struct frag_ports_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;		/* IP identification, network byte order */
	__u8 proto;
	__u8 pad;
};

struct frag_ports {
	__u64 expires;		/* ktime ns */
	__u16 sport;
	__u16 dport;
	__u8 pad[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_ports_key);
	__type(value, struct frag_ports);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_frags SEC(".maps");

struct counter_key {
	__u16 reason;		/* enum reason */
	__u8 hook;		/* enum hook */
	__u8 pad;
};

struct counter_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct counter_key);
	__type(value, struct counter_value);
	__uint(max_entries, 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

/* ---- Services ----
 * A service frontend (ClusterIP, NodePort, external or LoadBalancer IP,
 * hostPort) maps to a set of backends through numbered slots. User space
 * writes backends, then slots, then the frontend (with its backend count)
 * last, and shrinks in the reverse order, so a lookup never sees a slot
 * that is not written yet. */

enum svc_scope {
	SVC_SCOPE_EXTERNAL = 0,	/* traffic arriving from the network */
	SVC_SCOPE_INTERNAL = 1,	/* traffic from pods and from the node itself */
};

enum lb_algo {
	LB_RANDOM = 0,
	LB_ROUND_ROBIN = 1,
	LB_MAGLEV = 2,
};

enum svc_flags {
	SVC_F_AFFINITY = 1 << 0,	/* sessionAffinity: ClientIP */
	SVC_F_NODEPORT = 1 << 1,	/* a NodePort or hostPort frontend */
};

struct svc_key {
	__u32 addr[4];		/* frontend address; all zero for NodePort and
				 * hostPort: any address of the node */
	__u16 port;		/* network byte order */
	__u8 proto;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;
	__u8 scope;		/* enum svc_scope */
	__u8 pad[3];
};

struct svc_info {
	__u32 id;		/* frontend id: slots, Maglev table, conntrack */
	__u16 backends;		/* active backends, in slots 1..backends */
	__u8 algo;		/* enum lb_algo */
	__u8 flags;		/* SVC_F_* */
	__u32 affinity_timeout;	/* seconds, with SVC_F_AFFINITY */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_info);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services SEC(".maps");

struct slot_key {
	__u32 svc_id;
	__u32 slot;		/* 1..backends */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct slot_key);
	__type(value, __u32);	/* backend id */
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} svc_slots SEC(".maps");

enum backend_flags {
	BACKEND_F_TERMINATING = 1 << 0,	/* keeps its flows, takes no new ones */
};

struct backend {
	__u32 addr[4];
	__u16 port;		/* network byte order */
	__u8 family;
	__u8 flags;		/* BACKEND_F_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);	/* backend id */
	__type(value, struct backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backends SEC(".maps");

/* Round robin: the next slot per frontend, per CPU (no shared cache line). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);	/* frontend id */
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} svc_rr SEC(".maps");

/* Maglev: per frontend, a lookup table of backend ids. The table size is a
 * prime set at node init; user space builds a new inner map and swaps it in
 * whole, so a lookup sees either the old table or the new one. */
#define MAGLEV_DEFAULT_SIZE 16381

struct maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, MAGLEV_DEFAULT_SIZE);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);	/* frontend id */
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct maglev_inner);
} maglev SEC(".maps");

/* sessionAffinity ClientIP: the backend a client was last sent to. */
struct affinity_key {
	__u32 svc_id;
	__u8 family;
	__u8 pad[3];
	__u32 client[4];
};

struct affinity_value {
	__u64 last_used;	/* ktime ns */
	__u32 backend_id;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} affinity SEC(".maps");

/* ---- Connection tracking ----
 * One entry per direction of a translated flow, keyed by the tuple as it is
 * seen on the wire in that direction. LRU: when full, the least recently
 * used flows go first; expired entries are ignored on lookup and reaped by
 * user space. */

enum ct_flags {
	CT_F_REPLY = 1 << 0,		/* the reply direction of a flow */
	CT_F_HAIRPIN = 1 << 1,		/* client is its own backend: source was
					 * rewritten to the frontend too */
};

struct ct_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;		/* network byte order; ICMP echo: the id */
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

struct ct_entry {
	__u64 expires;		/* ktime ns */
	__u64 packets;
	__u64 bytes;
	__u32 svc_id;		/* frontend the flow came through */
	__u32 backend_id;	/* forward: the chosen backend */
	__u32 nat_addr[4];	/* reply: restored as the source */
	__u16 nat_port;		/* reply: restored as the source port */
	__u8 flags;		/* CT_F_* */
	__u8 tcp_flags;		/* TCP flags seen in this direction */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* Addresses of this node, for NodePort and hostPort frontends. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, __u32);	/* ifindex the address is on */
	__uint(max_entries, 256);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} node_addrs SEC(".maps");

/* ---- Egress SNAT ----
 * Pods' traffic to outside the cluster leaves with a node address and a
 * port allocated here. One entry per direction, keyed by the tuple as it is
 * on the wire: forward (pod -> destination) gives the node address and port
 * to use, reverse (destination -> node address and port) the pod's. A plain
 * hash, not LRU: a mapping in use must never be evicted by another flow, so
 * a full map refuses new flows (counted) instead. Expired entries are
 * reused by the allocator and reaped by user space. */

enum nat_flags {
	NAT_F_REVERSE = 1 << 0,		/* destination -> node: the reply direction */
};

struct nat_entry {
	__u64 expires;		/* ktime ns */
	__u64 packets;
	__u64 bytes;
	__u32 to_addr[4];	/* forward: node address; reverse: pod address */
	__u16 to_port;		/* forward: allocated port; reverse: pod's port */
	__u8 flags;		/* NAT_F_* */
	__u8 tcp_flags;		/* TCP flags seen in this direction */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ct_key);
	__type(value, struct nat_entry);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} snat SEC(".maps");

/* What SNAT does and to which address, written by the loader. */
struct nat_config {
	__u32 addr[4];		/* the node address pods' traffic leaves with */
	__u16 port_min;		/* allocation range, host byte order */
	__u16 port_max;
	__u8 family;
	__u8 enabled;
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nat_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_config SEC(".maps");

/* Destinations reached without masquerading: the cluster's pod and service
 * CIDRs and any extra ranges (like ip-masq-agent's nonMasqueradeCIDRs).
 * LPM over (family, address): prefixlen counts the 32 family bits too. */
struct nonmasq_key {
	__u32 prefixlen;
	__u32 family;
	__u32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct nonmasq_key);
	__type(value, __u32);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nonmasq SEC(".maps");

/* ---- Other nodes ----
 * Where the pods and addresses of other nodes are: each remote node's pod
 * CIDRs and its own addresses -> the node's address on the underlay and how
 * to reach it. LPM over (family, address) like nonmasq; user space writes
 * it (`podpath node peer`, the agent from Node objects). A destination
 * found here is never masqueraded. */
enum peer_flags {
	PEER_F_TUNNEL = 1 << 0,	/* encapsulate (VXLAN) towards node_addr; else routed */
	PEER_F_NODE = 1 << 1,	/* an address of the node itself, not its pods */
};

struct peer_key {
	__u32 prefixlen;
	__u32 family;
	__u32 addr[4];
};

struct peer {
	__u32 node_addr[4];	/* the node's underlay address */
	__u32 ifindex;		/* with PEER_F_TUNNEL: the overlay device */
	__u32 vni;		/* with PEER_F_TUNNEL: the VXLAN network id */
	__u8 family;
	__u8 flags;		/* enum peer_flags */
	__u16 mtu;		/* largest IP packet the path takes, 0: the FIB's */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct peer_key);
	__type(value, struct peer);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} peers SEC(".maps");

/* Allocation statistics, per CPU, indexed by enum nat_stat. */
enum nat_stat {
	NAT_STAT_ALLOCATED = 0,		/* new mappings */
	NAT_STAT_RETRIES = 1,		/* ports tried that were taken */
	NAT_STAT_REUSED_EXPIRED = 2,	/* expired mappings taken over */
	NAT_STAT_NO_PORT = 3,		/* no free port found: flow dropped */
	NAT_STAT_MAP_FULL = 4,		/* no room in the map: flow dropped */
	NAT_STAT_REUSED_RESET = 5,	/* mappings of reset TCP flows taken over */
	NAT_STAT_MAX = 6,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	/* Room for statistics to come: a new one keeps the map's layout. */
	__uint(max_entries, 16);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_stats SEC(".maps");

/* ---- IP fragments ----
 * Only the first fragment of a datagram carries its ports, on which every
 * translation is decided. What the first fragment became (its addresses
 * after translation, and the hook's decision) is kept per datagram and hook,
 * keyed by the first fragment as it arrived there, and the later fragments
 * get the same addresses. LRU: a datagram is in flight for milliseconds. */

struct frag_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;		/* IP identification, network byte order */
	__u8 proto;
	__u8 hook;		/* enum hook */
};

struct frag_entry {
	__u64 expires;		/* ktime ns */
	__u32 saddr;		/* the addresses after translation */
	__u32 daddr;
	__u8 decision;		/* the hook's enum svc_result for the datagram */
	__u8 pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_entry);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} frags SEC(".maps");

/* Typed handles so bpf2go emits these for user space even when a program
 * does not reference them directly. */
const enum reason reason_unused __attribute__((unused));
const enum hook hook_unused __attribute__((unused));
const enum identity identity_unused __attribute__((unused));
const enum policy_direction policy_direction_unused __attribute__((unused));
const enum svc_scope svc_scope_unused __attribute__((unused));
const enum lb_algo lb_algo_unused __attribute__((unused));
const enum svc_flags svc_flags_unused __attribute__((unused));
const enum backend_flags backend_flags_unused __attribute__((unused));
const enum ct_flags ct_flags_unused __attribute__((unused));
const enum nat_flags nat_flags_unused __attribute__((unused));
const enum peer_flags peer_flags_unused __attribute__((unused));
const enum nat_stat nat_stat_unused __attribute__((unused));

/* ---- Socket load balancing ----
 * The cgroup socket hooks (bpf/sock.c) send a node process's connect() and
 * sendmsg() to a service frontend straight to a backend, so none of its
 * packets is translated. The process must still see the frontend: as the
 * source of UDP replies (recvmsg) and as the peer of a connected socket
 * (getpeername). This map remembers, per socket and backend, the frontend
 * the socket asked for. Sockets are never removed explicitly: LRU, sized
 * like conntrack (one entry per connection or per UDP socket and backend). */

struct sock_rev_key {
	__u64 cookie;		/* bpf_get_socket_cookie() */
	__u32 addr[4];		/* backend address */
	__u16 port;		/* backend port, network byte order */
	__u8 family;
	__u8 pad[5];
};

struct sock_rev_value {
	__u32 addr[4];		/* frontend address */
	__u16 port;		/* frontend port, network byte order */
	__u8 family;
	__u8 pad;
	__u32 svc_id;		/* the frontend's id, for inspection */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_rev_key);
	__type(value, struct sock_rev_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_rev_nat SEC(".maps");

/* Events to user space (podpath monitor): one record per event in the
 * events ring buffer. A tuple is the packet's as the hook saw it; for ICMP,
 * sport and dport hold the type and the code (network byte order, as ports). */
struct event_tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;		/* IPPROTO_*, 0 when not IPv4 */
	__u8 pad[3];
};

enum event_kind {
	EVENT_DROP = 1,		/* the packet was dropped; reason says why */
	EVENT_TRACE = 2,	/* a traced packet's verdict at a hook */
};

struct event {
	__u64 ts_ns;		/* bpf_ktime_get_ns() when raised */
	__u32 ifindex;		/* the device the hook runs on */
	__u32 len;		/* the packet's length */
	__u16 reason;		/* enum reason */
	__u8 hook;		/* enum hook */
	__u8 kind;		/* enum event_kind */
	__u16 ethertype;	/* network byte order */
	__u16 pad;
	struct event_tuple tuple;	/* as the packet was when the event was raised */
	struct event_tuple orig;	/* as it arrived at the hook, when the hook
					 * translated it first; zero when unknown or
					 * untranslated */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* What the programs send, written by the loader (node init). */
struct event_config {
	__u32 drop_rate;	/* drop events per second and CPU; 0: none */
	__u32 drop_burst;	/* drop events a CPU may send at once after a
				 * quiet spell */
	__u32 trace_flags;	/* enum trace_flags: which packets raise trace
				 * events; 0, the default: none */
	__u32 trace_ifindex;	/* TRACE_F_IFINDEX: packets seen on this device */
	__be32 trace_addr;	/* TRACE_F_ADDR: packets from or to this address,
				 * before or after translation */
	__u32 trace_sample;	/* one matching packet in this many raises an
				 * event (per CPU); 0 or 1: every one */
	__u32 reserved[2];
};

/* What raises trace events, in event_config.trace_flags. */
enum trace_flags {
	TRACE_F_ALL = 1,	/* every packet */
	TRACE_F_IFINDEX = 2,	/* packets on trace_ifindex (in or out) */
	TRACE_F_ADDR = 4,	/* packets from or to trace_addr */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct event_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_config SEC(".maps");

/* Per CPU: the drop events' token bucket and what became of the events. */
struct event_state {
	__u64 refill_ns;	/* when the bucket was last filled */
	__u64 tokens;		/* events x 1e9: one event costs 1e9 */
	__u64 sent;		/* events written to the ring buffer */
	__u64 rate_limited;	/* events the rate limit held back */
	__u64 ringbuf_full;	/* events lost to a full ring buffer */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct event_state);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_state SEC(".maps");

/* Per CPU: what became of the packets tracing selected. */
struct trace_state {
	__u64 matched;		/* packets the trace filter selected */
	__u64 sent;		/* trace events written to the ring buffer */
	__u64 sampled_out;	/* matched, but not the 1 in trace_sample */
	__u64 ringbuf_full;	/* trace events lost to a full ring buffer */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct trace_state);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} trace_state SEC(".maps");
