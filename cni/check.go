package cni

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Check verifies an attachment is still as ADD left it, on both ends and in
// the datapath, and names the first thing that is not.
func Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData, true)
	if err != nil {
		return err
	}
	if _, err := parseArgs(args.Args); err != nil {
		return err
	}
	if err := checkAttachment(conf, args); err != nil {
		return datapathError(err)
	}
	return nil
}

func checkFailed(format string, a ...any) error {
	return newError(CodeCheckFailed, format, a...)
}

func checkAttachment(conf *Config, args *skel.CmdArgs) error {
	// The address: the pool's record, which prevResult must agree with.
	p, err := openPool(conf.StateDir, conf.Network, conf.PodCIDR)
	if err != nil {
		return err
	}
	addr, held, err := p.find(args.ContainerID, args.IfName)
	p.Close()
	if err != nil {
		return err
	}
	if !held {
		return checkFailed("no address allocated to container %s interface %s", args.ContainerID, args.IfName)
	}
	if conf.PrevResult != nil {
		if err := checkPrevResult(conf, args, addr); err != nil {
			return err
		}
	}

	// The host end.
	hostName := HostVethName(args.ContainerID, args.IfName)
	hostLink, err := netlink.LinkByName(hostName)
	if err != nil {
		return checkFailed("host veth %s is missing: %v", hostName, err)
	}
	if hostLink.Type() != "veth" {
		return checkFailed("host device %s is a %s, not a veth", hostName, hostLink.Type())
	}
	if hostLink.Attrs().Flags&net.FlagUp == 0 {
		return checkFailed("host veth %s is down", hostName)
	}
	hostMAC := hostLink.Attrs().HardwareAddr
	if err := checkNodeRoute(addr, hostLink); err != nil {
		return err
	}

	// The pod end.
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return checkFailed("pod netns %s: %v", args.Netns, err)
	}
	defer podNS.Close()
	var podMAC net.HardwareAddr
	err = podNS.Do(func(ns.NetNS) error {
		var err error
		podMAC, err = checkPod(conf, args.IfName, addr, hostMAC)
		return err
	})
	if err != nil {
		return err
	}

	// The datapath.
	eps, err := maps.OpenEndpoints(conf.PinRoot)
	if err != nil {
		return err
	}
	defer eps.Close()
	info, ok, err := eps.Lookup(addr)
	if err != nil {
		return err
	}
	switch {
	case !ok:
		return checkFailed("endpoint %s is not in the endpoints map", addr)
	case int(info.Ifindex) != hostLink.Attrs().Index:
		return checkFailed("endpoint %s points at ifindex %d, host veth %s is %d", addr, info.Ifindex, hostName, hostLink.Attrs().Index)
	case !bytes.Equal(info.Mac[:], podMAC):
		return checkFailed("endpoint %s has pod MAC %s, %s has %s", addr, info.PodMAC(), args.IfName, podMAC)
	case !bytes.Equal(info.NodeMac[:], hostMAC):
		return checkFailed("endpoint %s has gateway MAC %s, host veth %s has %s", addr, info.GatewayMAC(), hostName, hostMAC)
	case info.Network != 0 && info.Network != maps.NetworkID(conf.Network):
		return checkFailed("endpoint %s is in network %d, network %q is %d", addr, info.Network, conf.Network, maps.NetworkID(conf.Network))
	}
	atts, err := loader.Attachments(conf.PinRoot)
	if err != nil {
		return err
	}
	attached := map[string]bool{}
	for _, a := range atts {
		if isPodProgram(a) && a.Ifindex == hostLink.Attrs().Index {
			attached[a.Program] = true
		}
	}
	for _, p := range podPrograms {
		if !attached[p.name] {
			return checkFailed("%s is not attached to host veth %s (tc %s)", p.name, hostName, p.dir)
		}
	}
	return nil
}

func checkPrevResult(conf *Config, args *skel.CmdArgs, addr netip.Addr) error {
	for _, ipc := range conf.PrevResult.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok || a.Unmap() != addr {
			continue
		}
		if ipc.Interface == nil || *ipc.Interface < 0 || *ipc.Interface >= len(conf.PrevResult.Interfaces) {
			return checkFailed("prevResult: address %s names no interface", addr)
		}
		intf := conf.PrevResult.Interfaces[*ipc.Interface]
		if intf.Name != args.IfName || intf.Sandbox != args.Netns {
			return checkFailed("prevResult: address %s is on %s in %q, expected %s in %q", addr, intf.Name, intf.Sandbox, args.IfName, args.Netns)
		}
		return nil
	}
	return checkFailed("prevResult does not list the allocated address %s", addr)
}

func checkNodeRoute(addr netip.Addr, hostLink netlink.Link) error {
	routes, err := loader.Consistent(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: hostPrefix(addr)}, netlink.RT_FILTER_DST)
	})
	if err != nil {
		return fmt.Errorf("list node routes: %w", err)
	}
	for _, r := range routes {
		if r.LinkIndex == hostLink.Attrs().Index && r.Gw == nil {
			return nil
		}
	}
	return checkFailed("node route %s/32 dev %s is missing", addr, hostLink.Attrs().Name)
}

// checkPod runs inside the pod's namespace.
func checkPod(conf *Config, ifname string, addr netip.Addr, hostMAC net.HardwareAddr) (net.HardwareAddr, error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return nil, checkFailed("pod interface %s is missing: %v", ifname, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return nil, checkFailed("pod interface %s is down", ifname)
	}
	addrs, err := netlink.AddrList(link, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", ifname, err)
	}
	found := false
	for _, a := range addrs {
		ones, _ := a.Mask.Size()
		got, _ := netip.AddrFromSlice(a.IP)
		if got.Unmap() == addr && ones == 32 {
			found = true
		}
	}
	if !found {
		var have []string
		for _, a := range addrs {
			have = append(have, a.IPNet.String())
		}
		return nil, checkFailed("pod interface %s lacks address %s/32 (has %v)", ifname, addr, have)
	}
	idx := link.Attrs().Index
	routes, err := netlink.RouteList(link, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list routes of %s: %w", ifname, err)
	}
	gw := net.IP(conf.Gateway.AsSlice())
	var haveGwRoute, haveDefault bool
	for _, r := range routes {
		if r.Dst != nil && r.Dst.IP.Equal(gw) && isHostMask(r.Dst.Mask) && r.Scope == netlink.SCOPE_LINK {
			haveGwRoute = true
		}
		if (r.Dst == nil || isZeroMask(r.Dst.Mask)) && r.Gw.Equal(gw) {
			haveDefault = true
		}
	}
	if !haveGwRoute {
		return nil, checkFailed("pod route %s scope link dev %s is missing", conf.Gateway, ifname)
	}
	if !haveDefault {
		return nil, checkFailed("pod default route via %s dev %s is missing", conf.Gateway, ifname)
	}
	neighs, err := netlink.NeighList(idx, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list neighbours of %s: %w", ifname, err)
	}
	for _, n := range neighs {
		if !n.IP.Equal(gw) {
			continue
		}
		if n.State&netlink.NUD_PERMANENT == 0 {
			return nil, checkFailed("pod neighbour %s is not permanent", conf.Gateway)
		}
		if !bytes.Equal(n.HardwareAddr, hostMAC) {
			return nil, checkFailed("pod neighbour %s is %s, host veth is %s", conf.Gateway, n.HardwareAddr, hostMAC)
		}
		return link.Attrs().HardwareAddr, nil
	}
	return nil, checkFailed("pod neighbour %s lladdr %s (permanent) is missing", conf.Gateway, hostMAC)
}

func isHostMask(m net.IPMask) bool { ones, bits := m.Size(); return ones == bits && bits > 0 }
func isZeroMask(m net.IPMask) bool { ones, _ := m.Size(); return ones == 0 }
