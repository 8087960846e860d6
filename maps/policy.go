package maps

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Identities every node has, as enum identity in bpf/lib/maps.h; label sets
// and CIDRs get theirs from IdentityFirstUser up.
const (
	IdentityAny        = uint32(fromPodIdentityIDENTITY_ANY)
	IdentityHost       = uint32(fromPodIdentityIDENTITY_HOST)
	IdentityWorld      = uint32(fromPodIdentityIDENTITY_WORLD)
	IdentityRemoteNode = uint32(fromPodIdentityIDENTITY_REMOTE_NODE)
	IdentityFirstUser  = uint32(fromPodIdentityIDENTITY_FIRST_USER)
)

// Policy directions, as enum policy_direction.
const (
	PolicyIngress = uint8(fromPodPolicyDirectionPOLICY_INGRESS)
	PolicyEgress  = uint8(fromPodPolicyDirectionPOLICY_EGRESS)
)

// Endpoint flags: the pod is selected by a policy of that direction.
const (
	EndpointPolicyIngress = 1
	EndpointPolicyEgress  = 2
	// EndpointPolicyPending: a new pod whose policy is not computed yet;
	// set with both directions, so it is closed meanwhile.
	EndpointPolicyPending = 4
	// EndpointPolicyRanges: some of the pod's rules are port ranges, kept
	// in the range trie, which is looked up only for such pods.
	EndpointPolicyRanges = 8
	endpointPolicyAll    = EndpointPolicyIngress | EndpointPolicyEgress | EndpointPolicyPending | EndpointPolicyRanges
)

// Prefix lengths of policy keys (bpf/lib/maps.h): up to the direction
// (every protocol and port), up to the protocol (every port), and the
// whole key (one port). Keys of these lengths are exact (policy_rules);
// others are port prefixes of a range (policy_ranges).
const (
	policyPrefixAnyProto = 32 + 32 + 8
	policyPrefixAnyPort  = policyPrefixAnyProto + 8
	policyPrefixFull     = policyPrefixAnyPort + 16
)

// NewIPCacheKey is the ipcache key of prefix p (IPv4).
func NewIPCacheKey(p netip.Prefix) IPCacheKey {
	a := p.Masked().Addr().As4()
	return IPCacheKey{Prefixlen: uint32(p.Bits()), Addr: nativeU32(a[:])}
}

// Prefix is the prefix an ipcache key stands for.
func (k IPCacheKey) Prefix() netip.Prefix {
	var a [4]byte
	putNativeU32(a[:], k.Addr)
	return netip.PrefixFrom(netip.AddrFrom4(a), int(k.Prefixlen))
}

// PolicyRule allows a pod's connections in one direction with peers of one
// identity (IdentityAny: every peer), of one protocol (0: every protocol,
// and then every port) to destination ports PortFirst..PortLast (0..0 for
// every port of the protocol).
type PolicyRule struct {
	Endpoint  netip.Addr
	Direction uint8
	Identity  uint32
	Proto     uint8
	PortFirst uint16
	PortLast  uint16
}

func (r PolicyRule) String() string {
	dir := "ingress"
	if r.Direction == PolicyEgress {
		dir = "egress"
	}
	ports := "any"
	switch {
	case r.Proto == 0:
	case r.PortFirst == 0 && r.PortLast == 0:
		ports = fmt.Sprintf("proto %d any port", r.Proto)
	case r.PortFirst == r.PortLast:
		ports = fmt.Sprintf("proto %d port %d", r.Proto, r.PortFirst)
	default:
		ports = fmt.Sprintf("proto %d ports %d-%d", r.Proto, r.PortFirst, r.PortLast)
	}
	return fmt.Sprintf("%s %s identity %d %s", r.Endpoint, dir, r.Identity, ports)
}

// Keys are the policy keys of r: one per port prefix the range splits
// into (a range of n ports takes at most 2*16-2 prefixes), one for a rule
// of one port, of every port or of every protocol.
func (r PolicyRule) Keys() ([]PolicyKey, error) {
	if !r.Endpoint.Is4() {
		return nil, fmt.Errorf("policy rule %s: the endpoint must be an IPv4 address", r)
	}
	if r.Direction != PolicyIngress && r.Direction != PolicyEgress {
		return nil, fmt.Errorf("policy rule %s: direction %d", r, r.Direction)
	}
	a := r.Endpoint.As4()
	base := PolicyKey{Endpoint: nativeU32(a[:]), Identity: r.Identity, Direction: r.Direction, Proto: r.Proto}
	if r.Proto == 0 {
		if r.PortFirst != 0 || r.PortLast != 0 {
			return nil, fmt.Errorf("policy rule %s: ports without a protocol", r)
		}
		base.Prefixlen = policyPrefixAnyProto
		base.Proto = 0
		return []PolicyKey{base}, nil
	}
	if r.PortFirst == 0 && r.PortLast == 0 {
		base.Prefixlen = policyPrefixAnyPort
		return []PolicyKey{base}, nil
	}
	if r.PortFirst == 0 || r.PortLast < r.PortFirst {
		return nil, fmt.Errorf("policy rule %s: ports %d-%d", r, r.PortFirst, r.PortLast)
	}
	var keys []PolicyKey
	for _, p := range portPrefixes(r.PortFirst, r.PortLast) {
		k := base
		k.Prefixlen = policyPrefixAnyPort + uint32(p.bits)
		k.Dport = Port(p.first)
		keys = append(keys, k)
	}
	return keys, nil
}

// Ranged says whether some of r's keys are port prefixes shorter than a
// port, kept in the range trie: the pod's endpoint then needs
// EndpointPolicyRanges.
func (r PolicyRule) Ranged() bool {
	if r.Proto == 0 || r.PortFirst == 0 || r.PortLast <= r.PortFirst {
		return false
	}
	for _, p := range portPrefixes(r.PortFirst, r.PortLast) {
		if p.bits < 16 {
			return true
		}
	}
	return false
}

// Exact says whether k is a key of policy_rules (one port, every port of
// a protocol, every protocol) rather than a port prefix of policy_ranges.
func (k PolicyKey) Exact() bool {
	return k.Prefixlen == policyPrefixAnyProto || k.Prefixlen == policyPrefixAnyPort || k.Prefixlen == policyPrefixFull
}

type portPrefix struct {
	first uint16
	bits  int // leading bits of the port that count
}

// portPrefixes splits first..last into the fewest aligned blocks of 2^k
// ports, each a prefix of the port's 16 bits.
func portPrefixes(first, last uint16) []portPrefix {
	var out []portPrefix
	lo, hi := uint32(first), uint32(last)
	for lo <= hi {
		// The largest block aligned at lo that stays within hi.
		size := uint32(1) << bits.TrailingZeros32(lo|1<<16)
		for lo+size-1 > hi {
			size >>= 1
		}
		out = append(out, portPrefix{first: uint16(lo), bits: 16 - bits.TrailingZeros32(size)})
		lo += size
	}
	return out
}

// Policy gives access to a node's policy maps (identities, ipcache,
// policy_rules, policy_ranges) and the endpoints' policy flags.
type Policy struct {
	identities, ipcache, rules, ranges, endpoints *ebpf.Map
}

// PolicyMaps are the maps Policy works on.
var PolicyMaps = []string{MapIdentities, MapIPCache, MapPolicyRules, MapPolicyRanges, MapEndpoints}

// NewPolicy wraps the open maps named in PolicyMaps, taken from ms;
// Close closes them.
func NewPolicy(ms map[string]*ebpf.Map) (*Policy, error) {
	for _, name := range PolicyMaps {
		if ms[name] == nil {
			return nil, fmt.Errorf("policy: no map %s", name)
		}
	}
	return &Policy{identities: ms[MapIdentities], ipcache: ms[MapIPCache], rules: ms[MapPolicyRules],
		ranges: ms[MapPolicyRanges], endpoints: ms[MapEndpoints]}, nil
}

// OpenPolicy opens a node's pinned policy maps.
func OpenPolicy(root string) (*Policy, error) {
	ms := map[string]*ebpf.Map{}
	for _, name := range PolicyMaps {
		m, err := OpenPinned(root, name)
		if err != nil {
			for _, m := range ms {
				m.Close()
			}
			return nil, err
		}
		ms[name] = m
	}
	return NewPolicy(ms)
}

// Close releases the maps.
func (p *Policy) Close() error {
	return errors.Join(p.identities.Close(), p.ipcache.Close(), p.rules.Close(), p.ranges.Close(), p.endpoints.Close())
}

// SetIdentity gives the addresses of pfx the identity id: a single
// address (a pod's) in the identities map, a shorter prefix in the
// ipcache. SetCIDRIdentity puts even a /32 in the ipcache.
func (p *Policy) SetIdentity(pfx netip.Prefix, id uint32) error {
	if !pfx.Addr().Is4() {
		return fmt.Errorf("identity of %s: IPv4 only", pfx)
	}
	if pfx.Bits() < 32 {
		return p.SetCIDRIdentity(pfx, id)
	}
	k := newIdentityKey(pfx.Addr())
	if err := p.identities.Put(k, IPCacheEntry{Identity: id}); err != nil {
		return fmt.Errorf("identity of %s: %w", pfx.Addr(), mapFull(err, p.identities))
	}
	return nil
}

// DeleteIdentity forgets pfx, as SetIdentity wrote it.
func (p *Policy) DeleteIdentity(pfx netip.Prefix) error {
	if pfx.Bits() < 32 {
		return p.DeleteCIDRIdentity(pfx)
	}
	if err := p.identities.Delete(newIdentityKey(pfx.Addr())); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("identity of %s: %w", pfx.Addr(), err)
	}
	return nil
}

// SetCIDRIdentity gives the ipBlock CIDR pfx the identity id.
func (p *Policy) SetCIDRIdentity(pfx netip.Prefix, id uint32) error {
	if !pfx.Addr().Is4() {
		return fmt.Errorf("ipcache %s: IPv4 only", pfx)
	}
	if err := p.ipcache.Put(NewIPCacheKey(pfx), IPCacheEntry{Identity: id}); err != nil {
		return fmt.Errorf("ipcache %s: %w", pfx, mapFull(err, p.ipcache))
	}
	return nil
}

// DeleteCIDRIdentity forgets the CIDR pfx.
func (p *Policy) DeleteCIDRIdentity(pfx netip.Prefix) error {
	if err := p.ipcache.Delete(NewIPCacheKey(pfx)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("ipcache %s: %w", pfx, err)
	}
	return nil
}

func newIdentityKey(a netip.Addr) IdentityKey {
	b := a.As4()
	return IdentityKey{Addr: nativeU32(b[:])}
}

// Allow writes the keys of rule r.
func (p *Policy) Allow(r PolicyRule) error {
	keys, err := r.Keys()
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := p.PutKey(k); err != nil {
			return fmt.Errorf("policy %s: %w", r, err)
		}
	}
	return nil
}

// Revoke deletes the keys of rule r.
func (p *Policy) Revoke(r PolicyRule) error {
	keys, err := r.Keys()
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := p.DeleteKey(k); err != nil {
			return fmt.Errorf("policy %s: %w", r, err)
		}
	}
	return nil
}

// ErrNoEndpoint is returned for a pod address with no endpoint entry.
var ErrNoEndpoint = errors.New("no such endpoint")

// SetEnforcement sets which directions of the pod at ip its policy
// decides (EndpointPolicyIngress, EndpointPolicyEgress), clearing
// EndpointPolicyPending, and keeps the rest of its endpoint entry.
func (p *Policy) SetEnforcement(ip netip.Addr, flags uint32) error {
	eps := NewEndpoints(p.endpoints)
	info, ok, err := eps.Lookup(ip)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("policy enforcement of %s: %w", ip, ErrNoEndpoint)
	}
	info.Flags = info.Flags&^endpointPolicyAll | flags
	return eps.Put(ip, info)
}

// mapFull names a full map's refusal as ErrMapFull.
func mapFull(err error, m *ebpf.Map) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("%w (%d entries)", ErrMapFull, m.MaxEntries())
	}
	return err
}

// Identities lists the pods' addresses' identities, each as a /32.
func (p *Policy) Identities() (map[netip.Prefix]uint32, error) {
	out := map[netip.Prefix]uint32{}
	var (
		k IdentityKey
		v IPCacheEntry
	)
	it := p.identities.Iterate()
	for it.Next(&k, &v) {
		var a [4]byte
		putNativeU32(a[:], k.Addr)
		out[netip.PrefixFrom(netip.AddrFrom4(a), 32)] = v.Identity
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", MapIdentities, err)
	}
	return out, nil
}

// CIDRIdentities lists the ipcache: ipBlock CIDR to identity.
func (p *Policy) CIDRIdentities() (map[netip.Prefix]uint32, error) {
	return readIPCache(p.ipcache)
}

func readIPCache(m *ebpf.Map) (map[netip.Prefix]uint32, error) {
	out := map[netip.Prefix]uint32{}
	var (
		k IPCacheKey
		v IPCacheEntry
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k.Prefix()] = v.Identity
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", MapIPCache, err)
	}
	return out, nil
}

// Keys lists the policy keys, exact and ranges, with their counts of
// connections let in.
func (p *Policy) Keys() (map[PolicyKey]uint64, error) {
	out := map[PolicyKey]uint64{}
	for _, m := range []*ebpf.Map{p.rules, p.ranges} {
		if err := readPolicyKeys(m, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func readPolicyKeys(m *ebpf.Map, out map[PolicyKey]uint64) error {
	var (
		k PolicyKey
		v PolicyEntry
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v.Packets
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read policy keys: %w", err)
	}
	return nil
}

func (p *Policy) keyMap(k PolicyKey) *ebpf.Map {
	if k.Exact() {
		return p.rules
	}
	return p.ranges
}

// PutKey writes one policy key (a part of a rule, PolicyRule.Keys).
func (p *Policy) PutKey(k PolicyKey) error {
	m := p.keyMap(k)
	if err := m.Update(k, PolicyEntry{}, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return fmt.Errorf("policy key of %s: %w", k.EndpointAddr(), mapFull(err, m))
	}
	return nil
}

// DeleteKey removes one policy key.
func (p *Policy) DeleteKey(k PolicyKey) error {
	if err := p.keyMap(k).Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("policy key of %s: %w", k.EndpointAddr(), err)
	}
	return nil
}

// EndpointAddr is the pod a policy key belongs to.
func (k PolicyKey) EndpointAddr() netip.Addr {
	var a [4]byte
	putNativeU32(a[:], k.Endpoint)
	return netip.AddrFrom4(a)
}

// Enforcement lists the endpoints with policy flags.
func (p *Policy) Enforcement() (map[netip.Addr]uint32, error) {
	list, err := NewEndpoints(p.endpoints).List()
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]uint32{}
	for _, e := range list {
		if f := e.Info.Flags & endpointPolicyAll; f != 0 {
			out[e.IP] = f
		}
	}
	return out, nil
}

// Rule is the rule a policy key is a part of, with the port range of its
// prefix alone (PolicyRule.Keys split a range into such prefixes).
func (k PolicyKey) Rule() PolicyRule {
	r := PolicyRule{Endpoint: k.EndpointAddr(), Direction: k.Direction, Identity: k.Identity}
	if k.Prefixlen <= policyPrefixAnyProto {
		return r
	}
	r.Proto = k.Proto
	if k.Prefixlen <= policyPrefixAnyPort {
		return r
	}
	bits := int(k.Prefixlen - policyPrefixAnyPort)
	r.PortFirst = HostPort(k.Dport)
	r.PortLast = r.PortFirst | uint16(1<<(16-bits)-1)
	return r
}
