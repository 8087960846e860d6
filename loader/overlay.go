package loader

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

type overlayInfo struct {
	ifindex int
	mtu     int // the device's: the largest inner IP packet
}

// readOverlay finds the node's overlay device.
func readOverlay() (overlayInfo, error) {
	l, err := netlink.LinkByName(OverlayDevice)
	if err != nil {
		return overlayInfo{}, fmt.Errorf("overlay device %s: %w (run `podpath node init --routing %s`)", OverlayDevice, err, RoutingVXLAN)
	}
	return overlayInfo{ifindex: l.Attrs().Index, mtu: l.Attrs().MTU}, nil
}

// uplinkMTU is the MTU of the node's first uplink.
func uplinkMTU(c Config) (int, error) {
	if len(c.Uplinks) == 0 {
		return 0, errors.New("no uplink")
	}
	l, err := netlink.LinkByName(c.Uplinks[0])
	if err != nil {
		return 0, fmt.Errorf("uplink %s: %w", c.Uplinks[0], err)
	}
	return l.Attrs().MTU, nil
}

// resolveMTU gives a node whose pod MTU is unset the largest that fits
// its path to other nodes: the first uplink's MTU, less the VXLAN
// overhead in overlay mode; DefaultMTU without uplinks.
func (c *Config) resolveMTU() error {
	if c.MTU != 0 {
		return nil
	}
	if len(c.Uplinks) == 0 {
		c.MTU = DefaultMTU
		return nil
	}
	mtu, err := uplinkMTU(*c)
	if err != nil {
		return err
	}
	if c.Routing == RoutingVXLAN {
		mtu -= VXLANOverhead
	}
	c.MTU = mtu
	return nil
}

// overlayMAC is the overlay device's address on the node with address a:
// 0e:70 and the address (bpf/lib/peer.h).
func overlayMAC(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x0e, 0x70, b[0], b[1], b[2], b[3]}
}

// overlayAddr is the node's address in the overlay: the outer source of
// what it encapsulates, the address peers know it by (the SNAT address, or
// else the uplink's first).
func overlayAddr(c Config) (netip.Addr, error) {
	if c.SNATAddr.Is4() {
		return c.SNATAddr, nil
	}
	if a, ok := firstUplinkAddr(c); ok && a.Is4() {
		return a, nil
	}
	if len(c.Uplinks) == 0 {
		return netip.Addr{}, fmt.Errorf("routing %s needs an uplink", RoutingVXLAN)
	}
	return netip.Addr{}, fmt.Errorf("routing %s: uplink %s has no IPv4 address", RoutingVXLAN, c.Uplinks[0])
}

// ensureOverlay creates (or keeps) the overlay device: VXLAN in external
// mode on the node's port, its MTU the uplink's less the overhead, its MAC
// derived from the node's address (bpf/lib/peer.h), no ARP (from_overlay
// takes frames for any MAC as the host's) and no IPv6 (nothing of podpath's speaks it there, and router
// solicitations would be dropped as unsupported anyway); then attaches
// from_overlay and to_overlay to it.
func ensureOverlay(c Config, progs map[string]*ebpf.Program) error {
	mtu, err := uplinkMTU(c)
	if err != nil {
		return fmt.Errorf("routing %s needs an uplink: %w", RoutingVXLAN, err)
	}
	mtu -= VXLANOverhead
	addr, err := overlayAddr(c)
	if err != nil {
		return err
	}
	mac := overlayMAC(addr)
	if l, err := netlink.LinkByName(OverlayDevice); err == nil {
		vx, ok := l.(*netlink.Vxlan)
		if !ok || !vx.FlowBased || vx.Port != int(c.VXLANPort) {
			if err := netlink.LinkDel(l); err != nil {
				return fmt.Errorf("replace %s: %w", OverlayDevice, err)
			}
		}
	}
	l, err := netlink.LinkByName(OverlayDevice)
	if err != nil {
		la := netlink.NewLinkAttrs()
		la.Name = OverlayDevice
		la.MTU = mtu
		la.HardwareAddr = mac
		if err := netlink.LinkAdd(&netlink.Vxlan{LinkAttrs: la, FlowBased: true, Port: int(c.VXLANPort)}); err != nil {
			return fmt.Errorf("create %s (VXLAN, external, port %d): %w", OverlayDevice, c.VXLANPort, err)
		}
		if l, err = netlink.LinkByName(OverlayDevice); err != nil {
			return err
		}
	}
	if l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("%s MTU %d: %w", OverlayDevice, mtu, err)
		}
	}
	if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
		return fmt.Errorf("%s address: %w", OverlayDevice, err)
	}
	if err := netlink.LinkSetARPOff(l); err != nil {
		return fmt.Errorf("%s: no ARP: %w", OverlayDevice, err)
	}
	v6 := filepath.Join("/proc/sys/net/ipv6/conf", OverlayDevice, "disable_ipv6")
	if _, err := os.Stat(v6); err == nil {
		if err := os.WriteFile(v6, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("%s: disable IPv6: %w", OverlayDevice, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s up: %w", OverlayDevice, err)
	}
	idx := l.Attrs().Index
	if _, err := AttachTC(c.PinRoot, c.TCAttach, maps.ProgFromOverlay, progs[maps.ProgFromOverlay], idx, Ingress); err != nil {
		return err
	}
	if _, err := AttachTC(c.PinRoot, c.TCAttach, maps.ProgToOverlay, progs[maps.ProgToOverlay], idx, Egress); err != nil {
		return err
	}
	return nil
}

// removeOverlay detaches from the overlay device and deletes it, if there is one.
func removeOverlay(root string) error {
	l, err := netlink.LinkByName(OverlayDevice)
	if err != nil {
		return nil
	}
	errs := []error{
		DetachTC(root, maps.ProgFromOverlay, OverlayDevice, Ingress),
		DetachTC(root, maps.ProgToOverlay, OverlayDevice, Egress),
	}
	if err := netlink.LinkDel(l); err != nil {
		errs = append(errs, fmt.Errorf("delete %s: %w", OverlayDevice, err))
	}
	return errors.Join(errs...)
}
