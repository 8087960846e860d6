package sim

import (
	"fmt"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// UplinkName is the node's device towards the outside network.
const UplinkName = "uplink0"

// Outside is a host on the network behind a node's uplink: a client of
// NodePorts and external IPs, a peer for egress.
type Outside struct {
	NS ns.NetNS
	IP netip.Addr // its address on the link
	// NodeIP is the node's address on the same link.
	NodeIP netip.Addr
}

// Do runs fn in the outside host's network namespace.
func (o *Outside) Do(fn func() error) error {
	return o.NS.Do(func(ns.NetNS) error { return fn() })
}

type uplinkOptions struct {
	node, outside netip.Prefix
}

// WithUplink gives the node an uplink, UplinkName, with address node, joined
// by a veth pair to an outside host with address outside (same subnet).
// Both live only inside namespaces the node creates. The outside host
// routes the node's pod CIDR via the node.
func WithUplink(node, outside netip.Prefix) Option {
	return func(o *options) { o.uplink = &uplinkOptions{node: node, outside: outside} }
}

func (n *Node) addUplink(u *uplinkOptions) error {
	outNS, err := newNetNS(uniqueName(n.Name, "outside"))
	if err != nil {
		return err
	}
	n.Outside = &Outside{NS: outNS, IP: u.outside.Addr(), NodeIP: u.node.Addr()}
	err = n.Do(func() error {
		la := netlink.NewLinkAttrs()
		la.Name = UplinkName
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "pp-outside0", PeerNamespace: netlink.NsFd(int(outNS.Fd()))}); err != nil {
			return fmt.Errorf("create uplink: %w", err)
		}
		return configureLink(UplinkName, u.node)
	})
	if err != nil {
		return err
	}
	return n.Outside.Do(func() error {
		peer, err := netlink.LinkByName("pp-outside0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetName(peer, "eth0"); err != nil {
			return err
		}
		if err := configureLink("eth0", u.outside); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Dst: ipNet(n.PodCIDR), Gw: u.node.Addr().AsSlice()})
	})
}

func configureLink(name string, addr netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, name, err)
	}
	return netlink.LinkSetUp(l)
}
