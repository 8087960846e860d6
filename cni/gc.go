package cni

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// GC removes every attachment of this network that is not in the runtime's
// list of valid ones (cni.dev/valid-attachments), found by its address
// record or its host veth: its address, endpoint entry, host veth, link
// pins and hostPorts. From valid attachments whose device is gone (the pod's
// namespace deleted before DEL) it removes the endpoint entries and link
// pins. An attachment an ADD or DEL is working on is left alone, listed or
// not: GC never removes what an ADD is making.
func GC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData, false)
	if err != nil {
		return err
	}
	valid := make(map[string]bool, len(conf.ValidAttachments)) // by host veth name
	for _, a := range conf.ValidAttachments {
		valid[HostVethName(a.ContainerID, a.IfName)] = true
	}

	eps, err := maps.OpenEndpoints(conf.PinRoot)
	if errors.Is(err, maps.ErrNotLoaded) {
		eps = nil
	} else if err != nil {
		return err
	} else {
		defer eps.Close()
	}

	// The pool stays locked: while GC runs no address is allocated or
	// released but by GC, so an address no record names has no ADD that
	// could be writing its entry.
	p, err := openPool(conf.StateDir, conf.Network, netip.Prefix{})
	if err != nil {
		return err
	}
	defer p.Close()
	allocs, err := p.list()
	if err != nil {
		return err
	}

	var errs []error
	// hold runs fn holding an attachment's lock, or skips the attachment
	// while an ADD or DEL holds it.
	hold := func(hostVeth string, fn func() error) {
		lock, err := lockAttachment(conf.StateDir, conf.Network, hostVeth, false)
		if errors.Is(err, errAttachmentBusy) {
			slog.Info("gc: left an attachment in use", "veth", hostVeth, "reason", err)
			return
		}
		if err != nil {
			errs = append(errs, err)
			return
		}
		defer lock.Close()
		errs = append(errs, fn())
	}

	owner := make(map[netip.Addr]string, len(allocs)) // host veth by address
	for _, a := range allocs {
		veth := HostVethName(a.ContainerID, a.IfName)
		owner[a.Addr] = veth
		// The pool is the node's: another network's attachments are
		// that network's GC's to judge.
		if valid[veth] || a.Network != conf.Network {
			continue
		}
		hold(veth, func() error {
			if err := removeAttachment(conf, eps, veth, a.Addr); err != nil {
				return err
			}
			slog.Info("gc: released attachment", "container", a.ContainerID, "ifname", a.IfName, "ip", a.Addr)
			return p.release(a)
		})
	}

	// Host veths of this network whose address record is gone too.
	links, err := loader.Consistent(netlink.LinkList)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	alias := vethAlias(conf.Network)
	for _, l := range links {
		name := l.Attrs().Name
		if l.Type() != "veth" || l.Attrs().Alias != alias || !strings.HasPrefix(name, hostVethPrefix) || valid[name] {
			continue
		}
		hold(name, func() error {
			slog.Info("gc: removing stale veth", "veth", name)
			return removeAttachment(conf, eps, name, netip.Addr{})
		})
	}
	if eps != nil && hasServices(conf.StateDir) {
		veths, err := hostPortVeths(conf)
		errs = append(errs, err)
		for _, veth := range veths {
			if !valid[veth] {
				hold(veth, func() error { return removeHostPorts(conf, veth) })
			}
		}
	}

	// Entries whose device is gone. Listed before the devices: an entry
	// whose device is missing from the later list is stale.
	var entries []maps.Endpoint
	if eps != nil {
		if entries, err = eps.List(); err != nil {
			errs = append(errs, err)
		}
	}
	if links, err = loader.Consistent(netlink.LinkList); err != nil {
		return errors.Join(append(errs, err)...)
	}
	live := make(map[int]bool, len(links))
	for _, l := range links {
		live[l.Attrs().Index] = true
	}
	for _, ep := range entries {
		if live[int(ep.Info.Ifindex)] {
			continue
		}
		veth, owned := owner[ep.IP]
		if !owned {
			errs = append(errs, deleteStaleEndpoint(eps, ep))
			continue
		}
		hold(veth, func() error { return deleteStaleEndpoint(eps, ep) })
	}

	// Link pins of deleted devices.
	atts, err := loader.Attachments(conf.PinRoot)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, a := range atts {
		if isPodProgram(a) && a.Ifindex == 0 && strings.HasPrefix(a.Ifname, hostVethPrefix) {
			hold(a.Ifname, func() error {
				slog.Info("gc: removing link pin of a deleted device", "veth", a.Ifname, "program", a.Program)
				return loader.DetachTC(conf.PinRoot, a.Program, a.Ifname, a.Direction)
			})
		}
	}
	return errors.Join(errs...)
}

// deleteStaleEndpoint deletes ep's entry unless it changed since it was
// read: an ADD repeated meanwhile gave the pod a new device.
func deleteStaleEndpoint(eps *maps.Endpoints, ep maps.Endpoint) error {
	cur, ok, err := eps.Lookup(ep.IP)
	if err != nil || !ok || cur.Ifindex != ep.Info.Ifindex {
		return err
	}
	slog.Info("gc: removing stale endpoint", "ip", ep.IP, "ifindex", ep.Info.Ifindex)
	return eps.Delete(ep.IP)
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
