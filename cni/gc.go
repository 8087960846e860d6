package cni

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// GC removes every attachment of this network that is not in the runtime's
// list of valid ones (cni.dev/valid-attachments): its address, endpoint
// entry, host veth and link pin. It also sweeps what no attachment owns any
// more: host veths of this network whose attachment is gone, endpoint
// entries whose device is gone, and link pins of deleted devices.
func GC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData, false)
	if err != nil {
		return err
	}
	valid := make(map[types.GCAttachment]bool, len(conf.ValidAttachments))
	validVeths := make(map[string]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[a] = true
		validVeths[HostVethName(a.ContainerID, a.IfName)] = true
	}

	eps, err := maps.OpenEndpoints(conf.PinRoot)
	if errors.Is(err, maps.ErrNotLoaded) {
		eps = nil
	} else if err != nil {
		return err
	} else {
		defer eps.Close()
	}

	p, err := openPool(conf.StateDir, conf.Network, netip.Prefix{})
	if err != nil {
		return err
	}
	allocs, err := p.list()
	p.Close()
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range allocs {
		if valid[types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName}] {
			continue
		}
		if _, err := teardown(conf, eps, a.ContainerID, a.IfName); err != nil {
			errs = append(errs, err)
			continue
		}
		slog.Info("gc: released attachment", "container", a.ContainerID, "ifname", a.IfName, "ip", a.Addr)
	}

	// Snapshot the entries before listing devices: an ADD running meanwhile
	// creates its veth before its entry, so every entry read here whose
	// device is missing from the later list is truly stale.
	var entries []maps.Endpoint
	if eps != nil {
		if entries, err = eps.List(); err != nil {
			errs = append(errs, err)
		}
	}
	links, err := loader.Consistent(netlink.LinkList)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	live := make(map[int]bool, len(links))
	alias := vethAlias(conf.Network)
	for _, l := range links {
		live[l.Attrs().Index] = true
		name := l.Attrs().Name
		if l.Type() != "veth" || l.Attrs().Alias != alias || !strings.HasPrefix(name, hostVethPrefix) || validVeths[name] {
			continue
		}
		if eps != nil {
			errs = append(errs, deleteEndpointsOf(eps, l.Attrs().Index))
		}
		if err := removeHostSide(conf.PinRoot, name); err != nil {
			errs = append(errs, err)
			continue
		}
		live[l.Attrs().Index] = false
		slog.Info("gc: removed stale veth", "veth", name)
	}
	for _, ep := range entries {
		if !live[int(ep.Info.Ifindex)] {
			errs = append(errs, eps.Delete(ep.IP))
			slog.Info("gc: removed stale endpoint", "ip", ep.IP, "ifindex", ep.Info.Ifindex)
		}
	}

	if eps != nil && hasServices(conf.StateDir) {
		errs = append(errs, removeHostPorts(conf, "", func(veth string) bool { return validVeths[veth] }))
	}

	atts, err := loader.Attachments(conf.PinRoot)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, a := range atts {
		if isPodProgram(a) && a.Ifindex == 0 && strings.HasPrefix(a.Ifname, hostVethPrefix) {
			errs = append(errs, loader.DetachTC(conf.PinRoot, a.Program, a.Ifname, a.Direction))
			slog.Info("gc: removed link pin of a deleted device", "veth", a.Ifname, "program", a.Program)
		}
	}
	return errors.Join(errs...)
}

// isPodProgram tells whether a is one of the programs ADD attaches to a
// pod's host veth, at its hook.
func isPodProgram(a loader.Attachment) bool {
	for _, p := range podPrograms {
		if a.Program == p.name && a.Direction == p.dir {
			return true
		}
	}
	return false
}
