package sim

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Remote is a host on a network of its own behind the node's outside host,
// which routes between the two: a pod on another node, a server across
// the internet, anything with a router between it and the node.
type Remote struct {
	NS  ns.NetNS
	IP  netip.Addr
	Net netip.Prefix
	// RouterLink is the outside host's device towards the remote.
	RouterLink string
}

// Do runs fn in the remote host's network namespace.
func (r *Remote) Do(fn func() error) error {
	return r.NS.Do(func(ns.NetNS) error { return fn() })
}

// AddRemote puts a remote host with address addr behind the node's outside
// host, which gets gw on the remote's network (addr's) and forwards. The
// remote routes everything through gw, the node routes the remote's
// network through the outside host. Close removes it.
func (n *Node) AddRemote(name string, gw, addr netip.Prefix) (*Remote, error) {
	if n.Outside == nil {
		return nil, fmt.Errorf("remote %s: node %s has no uplink", name, n.Name)
	}
	remoteNS, err := newNetNS(uniqueName(n.Name, name))
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	r := &Remote{NS: remoteNS, IP: addr.Addr(), Net: addr.Masked(), RouterLink: fmt.Sprintf("remote%d", len(n.remotes))}
	n.remotes = append(n.remotes, r)
	n.mu.Unlock()
	err = n.Outside.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("set forwarding: %w", err)
		}
		la := netlink.NewLinkAttrs()
		la.Name = r.RouterLink
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(remoteNS.Fd()))}); err != nil {
			return fmt.Errorf("link to remote %s: %w", name, err)
		}
		return configureLink(r.RouterLink, gw)
	})
	if err != nil {
		return nil, err
	}
	err = r.Do(func() error {
		if err := configureLink("eth0", addr); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Gw: gw.Addr().AsSlice()})
	})
	if err != nil {
		return nil, fmt.Errorf("remote %s: %w", name, err)
	}
	err = n.Do(func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: ipNet(r.Net), Gw: n.Outside.IP.AsSlice()})
	})
	if err != nil {
		return nil, fmt.Errorf("route to remote %s: %w", name, err)
	}
	return r, nil
}

// LimitRouteMTU routes dst, in the namespace do runs in, out of device dev
// (through gw when it is valid) with its MTU locked at mtu: a locked MTU is
// the route's for forwarded packets too, on every kernel, so packets with
// DF that do not fit are answered with ICMP fragmentation needed. undo
// removes the route.
func LimitRouteMTU(do func(func() error) error, dst netip.Prefix, dev string, gw netip.Addr, mtu int) (undo func() error, err error) {
	r := &netlink.Route{Dst: ipNet(dst), MTU: mtu, MTULock: true}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	}
	err = do(func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("%s: %w", dev, err)
		}
		r.LinkIndex = l.Attrs().Index
		return netlink.RouteReplace(r)
	})
	if err != nil {
		return nil, fmt.Errorf("route %s with MTU %d: %w", dst, mtu, err)
	}
	return func() error { return do(func() error { return netlink.RouteDel(r) }) }, nil
}

// RouteMTU is the MTU of the route to dst in the namespace do runs in, as
// `ip route get` shows it: a path MTU learned from ICMP shows there. 0 when
// the route has none.
func RouteMTU(do func(func() error) error, dst netip.Addr) (int, error) {
	var mtu int
	err := do(func() error {
		rs, err := netlink.RouteGet(dst.AsSlice())
		if err != nil {
			return err
		}
		if len(rs) == 0 {
			return fmt.Errorf("no route")
		}
		mtu = rs[0].MTU
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("route to %s: %w", dst, err)
	}
	return mtu, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
