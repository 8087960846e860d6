package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attachUplinks attaches from_netdev, to_netdev and xdp_netdev (in the
// node's XDP mode, unless off) to the node's uplinks, detaches them from
// devices that are no longer uplinks, records the uplinks' addresses as the
// node's addresses and configures SNAT.
func attachUplinks(c Config, prev []string, progs map[string]*ebpf.Program) error {
	for _, name := range prev {
		if slices.Contains(c.Uplinks, name) {
			continue
		}
		if err := DetachTC(c.PinRoot, maps.ProgFromNetdev, name, Ingress); err != nil {
			return err
		}
		if err := DetachTC(c.PinRoot, maps.ProgToNetdev, name, Egress); err != nil {
			return err
		}
		if err := DetachXDP(c.PinRoot, maps.ProgXDPNetdev, name); err != nil {
			return err
		}
	}
	var addrs []nodeAddr
	for _, name := range c.Uplinks {
		dev, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("uplink %s: %w", name, err)
		}
		idx := dev.Attrs().Index
		if _, err := AttachTC(c.PinRoot, c.TCAttach, maps.ProgFromNetdev, progs[maps.ProgFromNetdev], idx, Ingress); err != nil {
			return err
		}
		if _, err := AttachTC(c.PinRoot, c.TCAttach, maps.ProgToNetdev, progs[maps.ProgToNetdev], idx, Egress); err != nil {
			return err
		}
		if err := attachUplinkXDP(c, dev, progs[maps.ProgXDPNetdev]); err != nil {
			return err
		}
		if c.XDPMode == XDPNative && dev.Type() == "veth" {
			// The kernel turns GSO off on the other end of a veth that
			// runs XDP: everything sent to this node arrives cut to the
			// MTU (about a third of the TCP throughput in the cross_node
			// bench).
			slog.Warn("native XDP on a veth uplink: its peer stops sending GSO packets, which costs throughput towards this node; --xdp-mode off may serve better here",
				"uplink", name)
		}
		list, err := netlink.AddrList(dev, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("uplink %s addresses: %w", name, err)
		}
		for _, a := range list {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				addrs = append(addrs, nodeAddr{ip.Unmap(), uint32(idx)})
			}
		}
	}
	if err := writeNodeAddrs(c.PinRoot, addrs); err != nil {
		return err
	}
	return configureSNAT(c, addrs)
}

// attachUplinkXDP attaches xdp_netdev to an uplink in the node's XDP mode,
// or detaches it. In auto mode a veth gets none and a device whose driver
// has no native XDP gets none: generic XDP costs more than it saves, and
// from_netdev does the same work at tc.
func attachUplinkXDP(c Config, dev netlink.Link, prog *ebpf.Program) error {
	name, idx := dev.Attrs().Name, dev.Attrs().Index
	mode := c.XDPMode
	if mode == XDPAuto && dev.Type() == "veth" {
		slog.Info("XDP left off on a veth uplink (its peer would stop sending GSO packets); from_netdev serves it", "uplink", name)
		mode = XDPOff
	}
	if mode == XDPOff {
		return DetachXDP(c.PinRoot, maps.ProgXDPNetdev, name)
	}
	if mode != XDPAuto {
		return AttachXDP(c.PinRoot, mode, maps.ProgXDPNetdev, prog, idx)
	}
	err := AttachXDP(c.PinRoot, XDPNative, maps.ProgXDPNetdev, prog, idx)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ERANGE) {
		slog.Info("XDP left off on an uplink whose driver cannot run xdp_netdev natively; from_netdev serves it", "uplink", name, "reason", err)
		return DetachXDP(c.PinRoot, maps.ProgXDPNetdev, name)
	}
	return err
}

type nodeAddr struct {
	ip      netip.Addr
	ifindex uint32
}

// writeNodeAddrs makes the node_addrs map hold exactly addrs.
func writeNodeAddrs(root string, addrs []nodeAddr) error {
	m, err := maps.OpenPinned(root, maps.MapNodeAddrs)
	if err != nil {
		return err
	}
	defer m.Close()
	want := map[maps.EndpointKey]uint32{}
	for _, a := range addrs {
		want[maps.NewEndpointKey(a.ip)] = a.ifindex
	}
	if err := syncMap(m, want); err != nil {
		return fmt.Errorf("node addresses: %w", err)
	}
	return nil
}

// keptXDPMode is the XDP mode of an init that names none: the one the node
// records, native on a new node. A node initialised before modes were
// recorded keeps what its uplinks run: that loader fell back to generic
// without a word, and its upgrade must not stop at a device without native
// XDP. Generic on any uplink means generic on all (it works on every
// device); uplinks without xdp_netdev mean it was off.
func keptXDPMode(root string, prev Config, prevErr error) string {
	switch {
	case prevErr != nil || len(prev.Uplinks) == 0:
		return XDPAuto
	case prev.XDPMode != "":
		return prev.XDPMode
	}
	mode := XDPOff
	atts, _ := Attachments(root)
	for _, a := range atts {
		switch {
		case a.Program != maps.ProgXDPNetdev:
		case a.Mode == ModeXDPGeneric:
			mode = XDPGeneric
		case a.Mode == ModeXDPNative && mode == XDPOff:
			mode = XDPNative
		}
	}
	slog.Info("node initialised before XDP modes were recorded: keeping the mode its uplinks run", "xdpMode", mode)
	return mode
}
