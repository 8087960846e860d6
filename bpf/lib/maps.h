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

/* A pod on this node, written by the CNI plugin at ADD. */
struct endpoint_info {
	__u32 ifindex;		/* host-side veth: redirect_peer target */
	__u32 flags;
	__u8 mac[6];		/* the pod's eth0 */
	__u8 node_mac[6];	/* the host-side veth, the pod's gateway MAC */
	__u32 reserved;
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

/* Typed handles so bpf2go emits these for user space even when a program
 * does not reference them directly. */
const enum reason reason_unused __attribute__((unused));
const enum hook hook_unused __attribute__((unused));
