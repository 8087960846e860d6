package loader

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// How pods reach other nodes' pods.
const (
	// RoutingDirect routes a packet for another node's pod out of the
	// uplink with that node as next hop (Calico without encapsulation,
	// Flannel host-gw): the nodes must share a link.
	RoutingDirect = "direct"
	// RoutingVXLAN encapsulates it in VXLAN towards that node's address
	// on OverlayDevice (Flannel vxlan, Cilium tunnel mode): any IP path
	// between the nodes will do.
	RoutingVXLAN = "vxlan"

	// OverlayDevice is the node's VXLAN device in external (collect
	// metadata) mode; from_overlay and to_overlay run on it.
	OverlayDevice = "podpath_vxlan"
	// DefaultVXLANPort is the VXLAN UDP port: the Linux kernel's and
	// Flannel's default, not IANA's 4789.
	DefaultVXLANPort = 8472
	DefaultVNI       = 1
	// VXLANOverhead is what encapsulation adds to a packet: outer IPv4
	// (20), UDP (8), VXLAN (8) and the inner Ethernet header (14).
	VXLANOverhead = 50

	// routeProtocol marks the kernel routes podpath keeps for other
	// nodes' pod CIDRs (`ip route show proto 112`), so stale ones are
	// found again.
	routeProtocol = 112
)

// Peer is another node: its address on the network between the nodes and
// the pod CIDRs it owns.
type Peer struct {
	Name     string         `json:"name"`
	Address  netip.Addr     `json:"address"`
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
}

func peersFile(stateDir string) string { return filepath.Join(stateDir, "peers.json") }

// ReadPeers returns the node's peers, by name.
func ReadPeers(stateDir string) ([]Peer, error) {
	b, err := os.ReadFile(peersFile(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ps []Peer
	if err := json.Unmarshal(b, &ps); err != nil {
		return nil, fmt.Errorf("%s: %w", peersFile(stateDir), err)
	}
	return ps, nil
}

// ValidatePeers reports peers a node with pod CIDR own cannot use: names
// missing or repeated, addresses that are not IPv4 unicast or are repeated,
// pod CIDRs that are not IPv4, have host bits set, or overlap own or each
// other.
func ValidatePeers(own netip.Prefix, peers []Peer) error {
	v := NewPeerValidator(own)
	for _, p := range peers {
		if err := v.Add(p); err != nil {
			return err
		}
	}
	return nil
}

// PeerValidator checks peers one at a time against those it accepted
// before, so a set is checked in one pass (the agent skips a bad Node and
// goes on with the next).
type PeerValidator struct {
	own   netip.Prefix
	names map[string]bool
	addrs map[netip.Addr]string
	cidrs []peerCIDR
}

type peerCIDR struct {
	p    netip.Prefix
	name string
}

// NewPeerValidator checks peers of a node with pod CIDR own.
func NewPeerValidator(own netip.Prefix) *PeerValidator {
	return &PeerValidator{own: own, names: map[string]bool{}, addrs: map[netip.Addr]string{}}
}

// Add accepts p, or says what is wrong with it; a refused peer is not
// remembered.
func (v *PeerValidator) Add(p Peer) error {
	if p.Name == "" || strings.ContainsAny(p.Name, " \t\n/") {
		return fmt.Errorf("peer %q: a name without spaces or slashes is required", p.Name)
	}
	if v.names[p.Name] {
		return fmt.Errorf("peer %s: listed twice", p.Name)
	}
	if !p.Address.Is4() || !p.Address.IsGlobalUnicast() {
		return fmt.Errorf("peer %s: address %q is not an IPv4 unicast address", p.Name, p.Address)
	}
	if other, ok := v.addrs[p.Address]; ok {
		return fmt.Errorf("peer %s: address %s is peer %s's too", p.Name, p.Address, other)
	}
	if len(p.PodCIDRs) == 0 {
		return fmt.Errorf("peer %s: no pod CIDR", p.Name)
	}
	var mine []peerCIDR
	for _, c := range p.PodCIDRs {
		if !c.Addr().Is4() || c != c.Masked() {
			return fmt.Errorf("peer %s: pod CIDR %s must be an IPv4 prefix without host bits", p.Name, c)
		}
		if v.own.IsValid() && v.own.Overlaps(c) {
			return fmt.Errorf("peer %s: pod CIDR %s overlaps this node's %s", p.Name, c, v.own)
		}
		if c.Contains(p.Address) {
			return fmt.Errorf("peer %s: its address %s is inside its pod CIDR %s", p.Name, p.Address, c)
		}
		for _, o := range append(v.cidrs, mine...) {
			if o.p.Overlaps(c) {
				return fmt.Errorf("peer %s: pod CIDR %s overlaps peer %s's %s", p.Name, c, o.name, o.p)
			}
		}
		mine = append(mine, peerCIDR{c, p.Name})
	}
	v.names[p.Name] = true
	v.addrs[p.Address] = p.Name
	v.cidrs = append(v.cidrs, mine...)
	return nil
}

// SetPeers makes the node's peers exactly peers: validated as a whole
// first, then recorded, written to the peers map and to the kernel's
// routing table (for the node's own traffic to other nodes' pods, and for
// what the programs hand to the stack).
func SetPeers(c Config, peers []Peer) error {
	c = c.WithDefaults()
	if err := ValidatePeers(c.PodCIDR, peers); err != nil {
		return err
	}
	peers = slices.Clone(peers)
	slices.SortFunc(peers, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	if err := writePeers(c.StateDir, peers); err != nil {
		return err
	}
	return syncPeers(c, peers)
}

// AddPeer adds a peer, or replaces the one of the same name.
func AddPeer(c Config, p Peer) error {
	c = c.WithDefaults()
	peers, err := ReadPeers(c.StateDir)
	if err != nil {
		return err
	}
	peers = slices.DeleteFunc(peers, func(q Peer) bool { return q.Name == p.Name })
	return SetPeers(c, append(peers, p))
}

// DeletePeer removes the peer of that name; it is an error if there is none.
func DeletePeer(c Config, name string) error {
	c = c.WithDefaults()
	peers, err := ReadPeers(c.StateDir)
	if err != nil {
		return err
	}
	n := len(peers)
	peers = slices.DeleteFunc(peers, func(q Peer) bool { return q.Name == name })
	if len(peers) == n {
		return fmt.Errorf("no peer %q", name)
	}
	return SetPeers(c, peers)
}

func writePeers(stateDir string, peers []Peer) error {
	if peers == nil {
		peers = []Peer{}
	}
	b, err := json.MarshalIndent(peers, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	tmp := peersFile(stateDir) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, peersFile(stateDir))
}

// peerEntries are the peers map's entries for peers: each pod CIDR and
// each node address, reached as the node's routing mode says.
func peerEntries(c Config, peers []Peer, overlay *overlayInfo) map[maps.PeerKey]maps.Peer {
	want := map[maps.PeerKey]maps.Peer{}
	for _, p := range peers {
		v := maps.Peer{NodeAddr: maps.Addr16(p.Address), Family: maps.FamilyIPv4}
		if overlay != nil {
			v.Flags = maps.PeerFlagTunnel
			v.Ifindex = uint32(overlay.ifindex)
			v.Vni = c.VNI
			v.Mtu = uint16(overlay.mtu)
		}
		for _, cidr := range p.PodCIDRs {
			want[maps.NewPeerKey(cidr)] = v
		}
		node := v
		node.Flags |= maps.PeerFlagNode
		want[maps.NewPeerKey(netip.PrefixFrom(p.Address, 32))] = node
	}
	return want
}

// syncPeers writes peers to the peers map and the kernel routes, removing
// what belongs to no peer any more.
func syncPeers(c Config, peers []Peer) error {
	var overlay *overlayInfo
	if c.Routing == RoutingVXLAN {
		o, err := readOverlay()
		if err != nil {
			return err
		}
		overlay = &o
	}
	m, err := maps.OpenPinned(c.PinRoot, maps.MapPeers)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := syncMap(m, peerEntries(c, peers, overlay)); err != nil {
		return fmt.Errorf("peers: %w", err)
	}
	return syncPeerRoutes(c, peers, overlay)
}

// syncPeerRoutes keeps one kernel route per peer pod CIDR: via the peer's
// address (direct), or into the overlay device with the node's address as
// source (vxlan; to_overlay encapsulates). Routes of podpath's protocol
// for anything else are removed.
func syncPeerRoutes(c Config, peers []Peer, overlay *overlayInfo) error {
	want := map[netip.Prefix]netlink.Route{}
	for _, p := range peers {
		for _, cidr := range p.PodCIDRs {
			r := netlink.Route{Dst: prefixNet(cidr), Protocol: routeProtocol, Family: netlink.FAMILY_V4}
			if overlay != nil {
				r.LinkIndex = overlay.ifindex
				r.Scope = netlink.SCOPE_LINK
				if c.SNATAddr.IsValid() {
					r.Src = c.SNATAddr.AsSlice()
				} else if a, ok := firstUplinkAddr(c); ok {
					r.Src = a.AsSlice()
				}
			} else {
				r.Gw = p.Address.AsSlice()
			}
			want[cidr] = r
		}
	}
	have, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range have {
		if r.Dst == nil {
			continue
		}
		p, ok := netipPrefix(r.Dst)
		if _, keep := want[p]; ok && keep {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("remove route %s: %w", r.Dst, err)
		}
	}
	for cidr, r := range want {
		if err := netlink.RouteReplace(&r); err != nil {
			if overlay == nil && errors.Is(err, unix.ENETUNREACH) {
				return fmt.Errorf("route %s via %s: the peer is not on a link of this node; direct routing needs the nodes on one network segment (use --routing %s otherwise): %w",
					cidr, net.IP(r.Gw), RoutingVXLAN, err)
			}
			return fmt.Errorf("route %s: %w", cidr, err)
		}
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// firstUplinkAddr is the first IPv4 address of the node's first uplink.
func firstUplinkAddr(c Config) (netip.Addr, bool) {
	if len(c.Uplinks) == 0 {
		return netip.Addr{}, false
	}
	l, err := netlink.LinkByName(c.Uplinks[0])
	if err != nil {
		return netip.Addr{}, false
	}
	list, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil || len(list) == 0 {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(list[0].IP)
	return a.Unmap(), ok
}

// removePeerRoutes deletes every route podpath keeps for peers.
func removePeerRoutes() error {
	have, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range have {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		slog.Warn("peer routes left behind", "errors", errors.Join(errs...))
	}
	return errors.Join(errs...)
}
