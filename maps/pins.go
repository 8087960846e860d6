package maps

import "path/filepath"

// DefaultPinRoot is where a node's maps, programs and links are pinned.
// Several simulated nodes on one machine each use their own root.
const DefaultPinRoot = "/sys/fs/bpf/podpath"

// Map names, as declared in bpf/lib/maps.h and pinned under the root.
const (
	MapEndpoints = "endpoints"
	MapCounters  = "counters"
	MapServices  = "services"
	MapSvcSlots  = "svc_slots"
	MapBackends  = "backends"
	MapSvcRR     = "svc_rr"
	MapMaglev    = "maglev"
	MapAffinity  = "affinity"
	MapConntrack = "conntrack"
	MapNodeAddrs = "node_addrs"
	MapSNAT      = "snat"
	MapNatConfig = "nat_config"
	MapNonmasq   = "nonmasq"
	MapNatStats  = "nat_stats"
	MapFrags     = "frags"
	MapPeers     = "peers"
	// Networks (isolation domains) and the reaches declared between them.
	MapNetworks     = "networks"
	MapNetworkReach = "network_reach"
	// Network policy: identities of pods' addresses and of ipBlock CIDRs,
	// the allowed peers of each pod (exact keys, port ranges), the
	// connections allowed, first fragments' ports.
	MapIdentities   = "identities"
	MapIPCache      = "ipcache"
	MapPolicyRules  = "policy_rules"
	MapPolicyRanges = "policy_ranges"
	MapPolicyCT     = "policy_ct"
	MapPolicyFrags  = "policy_frags"
	// MapPolicyLegacy is where older versions kept every policy key, in
	// one trie; a loader finding it moves its keys (MigratePolicy).
	MapPolicyLegacy = "policy"
	// Drop events to user space (podpath monitor), their configuration
	// and, per CPU, their rate limit's state and accounting.
	MapEvents      = "events"
	MapEventConfig = "event_config"
	MapEventState  = "event_state"
	// Per CPU, what became of the packets tracing selected.
	MapTraceState = "trace_state"
)

// ScratchMaps are the programs' working memory: per-CPU, unpinned, each
// program object's own, holding nothing from one packet to the next.
var ScratchMaps = []string{"policy_scratch", "trace_orig"}

// VarMaglevTableSize is the programs' read-only copy of the Maglev table size.
const VarMaglevTableSize = "maglev_table_size"

// VarOverlayPort is the programs' read-only copy of the node's VXLAN UDP
// port (network byte order; 0 without the overlay): the uplink's hooks let
// the node's own VXLAN packets pass at once (bpf/lib/peer.h).
const VarOverlayPort = "overlay_port"

// VarOverlayAddr is the programs' read-only copy of the node's address in
// the overlay (network byte order; 0 without the overlay): from_pod puts
// it on what it encapsulates itself as the outer source (bpf/lib/peer.h).
const VarOverlayAddr = "overlay_addr"

// VarFIBLookupFlags is the flags the programs give bpf_fib_lookup:
// BPF_FIB_LOOKUP_SKIP_NEIGH where the kernel has it (bpf/lib/fib.h).
const VarFIBLookupFlags = "fib_lookup_flags"

// FIBLookupSkipNeigh is BPF_FIB_LOOKUP_SKIP_NEIGH (linux/bpf.h).
const FIBLookupSkipNeigh = 1 << 2

// VarTraceCapable is the programs' read-only switch of the trace events'
// hooks (bpf/lib/events.h): 1 while tracing is on.
const VarTraceCapable = "trace_capable"

// Program names, as the entry functions in bpf/*.c.
const (
	ProgFromPod    = "from_pod"
	ProgToPod      = "to_pod"
	ProgFromNetdev = "from_netdev"
	ProgToNetdev   = "to_netdev"
	ProgXDPNetdev  = "xdp_netdev"
	// On the node's VXLAN device, in overlay mode.
	ProgFromOverlay = "from_overlay"
	ProgToOverlay   = "to_overlay"
)

// AllMaps lists every pinned map.
var AllMaps = []string{MapEndpoints, MapCounters, MapServices, MapSvcSlots, MapBackends,
	MapSvcRR, MapMaglev, MapAffinity, MapConntrack, MapNodeAddrs,
	MapSNAT, MapNatConfig, MapNonmasq, MapNatStats, MapSockRevNat, MapFrags, MapPeers,
	MapEvents, MapEventConfig, MapEventState, MapTraceState, MapNetworks, MapNetworkReach,
	MapIdentities, MapIPCache, MapPolicyRules, MapPolicyRanges, MapPolicyCT, MapPolicyFrags}

// MapPath is the pin of a map.
func MapPath(root, name string) string { return filepath.Join(root, name) }

// ProgDir holds the pinned programs, so short-lived processes (the CNI
// plugin) can attach the node's current programs.
func ProgDir(root string) string { return filepath.Join(root, "progs") }

// ProgPath is the pin of a program.
func ProgPath(root, name string) string { return filepath.Join(ProgDir(root), name) }

// LinkDir holds the pinned bpf_links (tcx, XDP) that keep programs attached
// after the process that attached them exits.
func LinkDir(root string) string { return filepath.Join(root, "links") }
