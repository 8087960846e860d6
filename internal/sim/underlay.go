package sim

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/loader"
	"github.com/vishvananda/netlink"
)

// UnderlayBridge is the switch of an Underlay, in its own namespace.
const UnderlayBridge = "br0"

// Underlay is the network between simulated nodes: a Linux bridge in a
// namespace of its own plays the physical switch, and every node (and any
// host outside the cluster) has one veth into it. Nodes on an underlay are
// on one segment, as direct routing needs; VXLAN does not care.
type Underlay struct {
	NS     ns.NetNS
	Prefix netip.Prefix
	MTU    int

	mu    sync.Mutex
	hosts []ns.NetNS
	n     int
}

// NewUnderlay creates the switch for addresses in prefix, with links of
// the given MTU (0: 1500).
func NewUnderlay(name string, prefix netip.Prefix, mtu int) (_ *Underlay, err error) {
	if mtu == 0 {
		mtu = 1500
	}
	u := &Underlay{Prefix: prefix.Masked(), MTU: mtu}
	if u.NS, err = newNetNS(uniqueName(name, "underlay")); err != nil {
		return nil, err
	}
	err = u.NS.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = UnderlayBridge
		la.MTU = mtu
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return fmt.Errorf("create %s: %w", UnderlayBridge, err)
		}
		l, err := netlink.LinkByName(UnderlayBridge)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		removeNetNS(u.NS)
		return nil, err
	}
	return u, nil
}

// Addr is the n-th address of the underlay's prefix, with its length.
func (u *Underlay) Addr(n int) netip.Prefix {
	a := u.Prefix.Addr()
	for range n {
		a = a.Next()
	}
	return netip.PrefixFrom(a, u.Prefix.Bits())
}

// attach plugs a device named dev, in target, into the switch, with addr.
func (u *Underlay) attach(target ns.NetNS, dev string, addr netip.Prefix) error {
	u.mu.Lock()
	port := fmt.Sprintf("port%d", u.n)
	u.n++
	u.mu.Unlock()
	err := u.NS.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = port
		la.MTU = u.MTU
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: port + "p", PeerNamespace: netlink.NsFd(int(target.Fd()))}); err != nil {
			return fmt.Errorf("plug %s into the underlay: %w", dev, err)
		}
		l, err := netlink.LinkByName(port)
		if err != nil {
			return err
		}
		br, err := netlink.LinkByName(UnderlayBridge)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return err
	}
	return target.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(port + "p")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetName(l, dev); err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(l, u.MTU); err != nil {
			return err
		}
		return configureLink(dev, addr)
	})
}

// AddHost puts a host outside the cluster on the underlay: a namespace
// whose eth0 has addr. Closed with the underlay.
func (u *Underlay) AddHost(name string, addr netip.Prefix) (*Outside, error) {
	h, err := newNetNS(uniqueName(name, "host"))
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	u.hosts = append(u.hosts, h)
	u.mu.Unlock()
	if err := u.attach(h, "eth0", addr); err != nil {
		return nil, err
	}
	return &Outside{NS: h, IP: addr.Addr()}, nil
}

// Close removes the switch and the hosts on it; nodes remove their own links.
func (u *Underlay) Close() error {
	u.mu.Lock()
	hosts := u.hosts
	u.hosts = nil
	u.mu.Unlock()
	var errs []error
	for _, h := range hosts {
		errs = append(errs, removeNetNS(h))
	}
	if u.NS != nil {
		errs = append(errs, removeNetNS(u.NS))
		u.NS = nil
	}
	return errors.Join(errs...)
}

type underlayOptions struct {
	u    *Underlay
	addr netip.Prefix
}

// WithUnderlay gives the node its uplink, UplinkName, on underlay u with
// address addr. Pair it with WithLoaderConfig to choose the routing mode;
// the pod MTU is left to the node (the uplink's, less the overlay's cost).
func WithUnderlay(u *Underlay, addr netip.Prefix) Option {
	return func(o *options) {
		o.underlay = &underlayOptions{u: u, addr: addr}
		o.mtu = 0
	}
}

// Peer is the node as other nodes know it.
func (n *Node) Peer() loader.Peer {
	return loader.Peer{Name: n.Name, Address: n.Address, PodCIDRs: []netip.Prefix{n.PodCIDR}}
}

// SetPeers makes the node's peers exactly others.
func (n *Node) SetPeers(others ...*Node) error {
	var peers []loader.Peer
	for _, o := range others {
		if o != n {
			peers = append(peers, o.Peer())
		}
	}
	return n.Do(func() error {
		c, err := loader.ReadNodeConfig(n.StateDir)
		if err != nil {
			return err
		}
		return loader.SetPeers(c, peers)
	})
}

// JoinAll makes every node a peer of every other.
func JoinAll(nodes ...*Node) error {
	for _, n := range nodes {
		if err := n.SetPeers(nodes...); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}
