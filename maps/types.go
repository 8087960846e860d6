package maps

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/rlimit"
)

// Go mirrors of the C map keys and values. They are generated from the
// objects' BTF by bpf2go, so they cannot drift from bpf/lib/maps.h.
type (
	EndpointKey   = fromPodEndpointKey
	EndpointInfo  = fromPodEndpointInfo
	NetworkInfo   = fromPodNetworkInfo
	NetworkPair   = fromPodNetworkPair
	IdentityKey   = fromPodIdentityKey
	IPCacheKey    = fromPodIpcacheKey
	IPCacheEntry  = fromPodIpcacheEntry
	PolicyKey     = fromPodPolicyKey
	PolicyEntry   = fromPodPolicyEntry
	PolicyCtKey   = fromPodPolicyCtKey
	PolicyCtEntry = fromPodPolicyCtEntry
	CounterKey    = fromPodCounterKey
	CounterValue  = fromPodCounterValue
	Reason        = fromPodReason
	Hook          = fromPodHook
	SvcKey        = fromPodSvcKey
	SvcInfo       = fromPodSvcInfo
	SvcScope      = fromPodSvcScope
	LBAlgo        = fromPodLbAlgo
	SlotKey       = fromPodSlotKey
	Backend       = fromPodBackend
	AffinityKey   = fromPodAffinityKey
	AffinityValue = fromPodAffinityValue
	CtKey         = fromPodCtKey
	CtEntry       = fromPodCtEntry
	NatEntry      = fromPodNatEntry
	NatConfig     = fromPodNatConfig
	NonmasqKey    = fromPodNonmasqKey
	PeerKey       = fromPodPeerKey
	Peer          = fromPodPeer
)

// Address families as stored in keys (linux/socket.h).
const (
	FamilyIPv4 = 2
	FamilyIPv6 = 10
)

// NewEndpointKey builds the endpoints map key of an address of either family.
func NewEndpointKey(addr netip.Addr) EndpointKey {
	var k EndpointKey
	addr = addr.Unmap()
	if addr.Is4() {
		k.Family = FamilyIPv4
		b := addr.As4()
		k.Addr[0] = nativeU32(b[:])
		return k
	}
	k.Family = FamilyIPv6
	b := addr.As16()
	for i := range 4 {
		k.Addr[i] = nativeU32(b[i*4 : i*4+4])
	}
	return k
}

// IP returns the address a key stands for.
func (k EndpointKey) IP() netip.Addr {
	var b [16]byte
	for i := range 4 {
		putNativeU32(b[i*4:], k.Addr[i])
	}
	if k.Family == FamilyIPv4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// NewEndpointInfo is a pod's endpoints value: the ifindex of its host-side
// veth, its own MAC, the MAC it sees as its gateway (the host-side veth's)
// and the cookie of its network namespace.
func NewEndpointInfo(ifindex uint32, podMAC, gatewayMAC net.HardwareAddr, netnsCookie uint64) EndpointInfo {
	v := EndpointInfo{Ifindex: ifindex, NetnsCookie: netnsCookie}
	copy(v.Mac[:], podMAC)
	copy(v.NodeMac[:], gatewayMAC)
	return v
}

// PodMAC returns the pod's MAC address.
func (v *EndpointInfo) PodMAC() net.HardwareAddr { return net.HardwareAddr(v.Mac[:]) }

// GatewayMAC returns the host-side veth MAC, which the pod sees as its gateway.
func (v *EndpointInfo) GatewayMAC() net.HardwareAddr { return net.HardwareAddr(v.NodeMac[:]) }

// Addresses are stored in network byte order; reading the bytes as a
// native-endian word and writing it back keeps them so on any host.
func nativeU32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func putNativeU32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// Names reads the enumerator names of a C enum from the objects' BTF, where
// the enum is the one definition: "REASON_DROP_SPOOFED_IP" becomes
// "drop_spoofed_ip" once the prefix is trimmed.
type Names map[uint64]string

// The names are read on first use: parsing the embedded object costs
// milliseconds that short-lived processes (the CNI plugin) never need.
var (
	enumNamesOnce          sync.Once
	reasonNames, hookNames Names
)

func enumNames() {
	enumNamesOnce.Do(func() {
		spec, err := loadFromPod()
		if err != nil {
			panic(fmt.Sprintf("load embedded BPF spec: %v", err))
		}
		reasonNames = mustEnumNames(spec, "reason", "REASON_")
		hookNames = mustEnumNames(spec, "hook", "HOOK_")
	})
}

func mustEnumNames(spec *ebpf.CollectionSpec, enum, prefix string) Names {
	var e *btf.Enum
	if err := spec.Types.TypeByName(enum, &e); err != nil {
		panic(fmt.Sprintf("enum %s missing from BTF: %v", enum, err))
	}
	names := make(Names, len(e.Values))
	for _, v := range e.Values {
		names[v.Value] = strings.ToLower(strings.TrimPrefix(v.Name, prefix))
	}
	return names
}

// ReasonNames returns every reason code and its name.
func ReasonNames() Names { enumNames(); return reasonNames }

// String names a reason, e.g. "drop_spoofed_ip".
func (r Reason) String() string {
	enumNames()
	if n, ok := reasonNames[uint64(r)]; ok {
		return n
	}
	return fmt.Sprintf("reason_%d", uint32(r))
}

// IsDrop tells whether packets counted under r were dropped.
func (r Reason) IsDrop() bool { return strings.HasPrefix(r.String(), "drop_") }

// String names a hook, e.g. "from_pod".
func (h Hook) String() string {
	enumNames()
	if n, ok := hookNames[uint64(h)]; ok {
		return n
	}
	return fmt.Sprintf("hook_%d", uint32(h))
}

// liftMemlock removes RLIMIT_MEMLOCK for this process where the kernel
// charges BPF objects against it (cilium/ebpf checks, once).
func liftMemlock() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("lift RLIMIT_MEMLOCK for BPF maps: %w", err)
	}
	return nil
}

// Specs returns the collection spec of every BPF object, keyed by the name
// of its entry program.
//
// Whoever asks for specs is about to create maps and programs, so this also
// lifts RLIMIT_MEMLOCK where the kernel still charges BPF memory against it
// (before 5.11; a no-op after).
func Specs() (map[string]*ebpf.CollectionSpec, error) {
	if err := liftMemlock(); err != nil {
		return nil, err
	}
	fromPod, err := loadFromPod()
	if err != nil {
		return nil, fmt.Errorf("load from_pod object: %w", err)
	}
	xdp, err := loadXdpNetdev()
	if err != nil {
		return nil, fmt.Errorf("load xdp_netdev object: %w", err)
	}
	fromNetdev, err := loadFromNetdev()
	if err != nil {
		return nil, fmt.Errorf("load from_netdev object: %w", err)
	}
	toNetdev, err := loadToNetdev()
	if err != nil {
		return nil, fmt.Errorf("load to_netdev object: %w", err)
	}
	toPod, err := loadToPod()
	if err != nil {
		return nil, fmt.Errorf("load to_pod object: %w", err)
	}
	fromOverlay, err := loadFromOverlay()
	if err != nil {
		return nil, fmt.Errorf("load from_overlay object: %w", err)
	}
	toOverlay, err := loadToOverlay()
	if err != nil {
		return nil, fmt.Errorf("load to_overlay object: %w", err)
	}
	return map[string]*ebpf.CollectionSpec{
		ProgFromPod:    fromPod,
		ProgToPod:      toPod,
		ProgFromNetdev: fromNetdev,
		ProgToNetdev:   toNetdev,
		ProgXDPNetdev:  xdp,

		ProgFromOverlay: fromOverlay,
		ProgToOverlay:   toOverlay,
	}, nil
}

// Hooks, as enum hook in bpf/lib/reasons.h.
const (
	HookFromPod    = fromPodHookHOOK_FROM_POD
	HookToPod      = fromPodHookHOOK_TO_POD
	HookFromNetdev = fromPodHookHOOK_FROM_NETDEV
	HookToNetdev   = fromPodHookHOOK_TO_NETDEV
	HookXDP        = fromPodHookHOOK_XDP

	HookFromOverlay = fromPodHookHOOK_FROM_OVERLAY
	HookToOverlay   = fromPodHookHOOK_TO_OVERLAY
)

// Reasons, as enum reason in bpf/lib/reasons.h.
const (
	ReasonForwardLocal      = fromPodReasonREASON_FORWARD_LOCAL
	ReasonToStack           = fromPodReasonREASON_TO_STACK
	ReasonARPToStack        = fromPodReasonREASON_ARP_TO_STACK
	ReasonDropTruncated     = fromPodReasonREASON_DROP_TRUNCATED
	ReasonDropBadIPHeader   = fromPodReasonREASON_DROP_BAD_IP_HEADER
	ReasonDropSpoofedIP     = fromPodReasonREASON_DROP_SPOOFED_IP
	ReasonDropSpoofedMAC    = fromPodReasonREASON_DROP_SPOOFED_MAC
	ReasonDropSpoofedARP    = fromPodReasonREASON_DROP_SPOOFED_ARP
	ReasonDropUnsupportedL3 = fromPodReasonREASON_DROP_UNSUPPORTED_L3
	ReasonDropTTLExceeded   = fromPodReasonREASON_DROP_TTL_EXCEEDED

	ReasonDropNetworkIsolated = fromPodReasonREASON_DROP_NETWORK_ISOLATED
	ReasonDropPolicyIngress   = fromPodReasonREASON_DROP_POLICY_INGRESS
	ReasonDropPolicyEgress    = fromPodReasonREASON_DROP_POLICY_EGRESS

	ReasonForwardRouted    = fromPodReasonREASON_FORWARD_ROUTED
	ReasonForwardTunnel    = fromPodReasonREASON_FORWARD_TUNNEL
	ReasonDropUnknownPeer  = fromPodReasonREASON_DROP_UNKNOWN_PEER
	ReasonDropNoPeer       = fromPodReasonREASON_DROP_NO_PEER
	ReasonDropTunnelFailed = fromPodReasonREASON_DROP_TUNNEL_FAILED
)

// Service frontends, backends and conntrack, as in bpf/lib/maps.h.
const (
	ScopeExternal = fromPodSvcScopeSVC_SCOPE_EXTERNAL
	ScopeInternal = fromPodSvcScopeSVC_SCOPE_INTERNAL

	AlgoRandom     = fromPodLbAlgoLB_RANDOM
	AlgoRoundRobin = fromPodLbAlgoLB_ROUND_ROBIN
	AlgoMaglev     = fromPodLbAlgoLB_MAGLEV

	SvcFlagAffinity = uint8(fromPodSvcFlagsSVC_F_AFFINITY)
	SvcFlagNodePort = uint8(fromPodSvcFlagsSVC_F_NODEPORT)

	BackendFlagTerminating = uint8(fromPodBackendFlagsBACKEND_F_TERMINATING)

	CtFlagReply   = uint8(fromPodCtFlagsCT_F_REPLY)
	CtFlagHairpin = uint8(fromPodCtFlagsCT_F_HAIRPIN)

	NatFlagReverse = uint8(fromPodNatFlagsNAT_F_REVERSE)

	PeerFlagTunnel = uint8(fromPodPeerFlagsPEER_F_TUNNEL)
	PeerFlagNode   = uint8(fromPodPeerFlagsPEER_F_NODE)
)

// NAT allocation statistics, the indexes of the nat_stats map.
var NatStatNames = map[uint32]string{
	uint32(fromPodNatStatNAT_STAT_ALLOCATED):      "allocated",
	uint32(fromPodNatStatNAT_STAT_RETRIES):        "retries",
	uint32(fromPodNatStatNAT_STAT_REUSED_EXPIRED): "reused_expired",
	uint32(fromPodNatStatNAT_STAT_NO_PORT):        "no_port",
	uint32(fromPodNatStatNAT_STAT_MAP_FULL):       "map_full",
	uint32(fromPodNatStatNAT_STAT_REUSED_RESET):   "reused_reset",
}

// ReasonSvcReject and the other service verdicts, as enum reason.
const (
	ReasonSvcReject      = fromPodReasonREASON_SVC_REJECT
	ReasonForwardFIB     = fromPodReasonREASON_FORWARD_FIB
	ReasonPassTranslated = fromPodReasonREASON_PASS_TRANSLATED
	ReasonDropNoBackend  = fromPodReasonREASON_DROP_NO_BACKEND
	ReasonDropCTFull     = fromPodReasonREASON_DROP_CT_FULL
	ReasonDropNATFailed  = fromPodReasonREASON_DROP_NAT_FAILED
	ReasonDropFIBFailed  = fromPodReasonREASON_DROP_FIB_FAILED
	ReasonSNAT           = fromPodReasonREASON_SNAT
	ReasonSvcReply       = fromPodReasonREASON_SVC_REPLY
	ReasonPass           = fromPodReasonREASON_PASS
	ReasonDropNATNoPort  = fromPodReasonREASON_DROP_NAT_NO_PORT
	ReasonDropNATMapFull = fromPodReasonREASON_DROP_NAT_MAP_FULL
)

// Addr16 packs an address into the [4]uint32 layout keys use (network byte
// order in memory; IPv4 in the first word).
func Addr16(addr netip.Addr) [4]uint32 { return NewEndpointKey(addr).Addr }

// AddrFrom16 is the inverse of Addr16.
// NewPeerKey is the peers map's key for prefix p.
func NewPeerKey(p netip.Prefix) PeerKey {
	k := NewEndpointKey(p.Addr())
	return PeerKey{Prefixlen: 32 + uint32(p.Bits()), Family: uint32(k.Family), Addr: k.Addr}
}

// Prefix is the prefix a peers map key stands for.
func (k PeerKey) Prefix() netip.Prefix {
	return netip.PrefixFrom(AddrFrom16(uint8(k.Family), k.Addr), int(k.Prefixlen)-32)
}

func AddrFrom16(family uint8, a [4]uint32) netip.Addr {
	return EndpointKey{Family: family, Addr: a}.IP()
}

// Port converts a host-order port to the network-order field of a key.
func Port(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// HostPort converts a network-order port field back to host order.
func HostPort(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}
