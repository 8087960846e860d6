package cni

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// Del disconnects a pod. It needs neither the pod's namespace nor a loaded
// datapath, and deleting what is already gone succeeds: runtimes send DEL
// twice, the second time without a namespace, and after failed ADDs.
func Del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData, false)
	if err != nil {
		return err
	}
	pa, err := parseArgs(args.Args)
	if err != nil {
		return err
	}
	eps, err := maps.OpenEndpoints(conf.PinRoot)
	if errors.Is(err, maps.ErrNotLoaded) {
		slog.Info("datapath not loaded: releasing the address only", "pinRoot", conf.PinRoot)
		eps = nil
	} else if err != nil {
		return err
	} else {
		defer eps.Close()
	}
	addr, err := teardown(conf, eps, args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	slog.Info("pod deleted", "pod", pa.String(), "container", args.ContainerID, "ifname", args.IfName, "ip", addr)
	return nil
}

// teardown removes everything an attachment owns on the node, in an order
// that keeps a concurrent ADD safe: the endpoint entry and the veth go
// before the address is released, so the address is never handed to a new
// pod while the old one's entry still names it.
func teardown(conf *Config, eps *maps.Endpoints, containerID, ifname string) (netip.Addr, error) {
	var addr netip.Addr
	p, err := openPool(conf.StateDir, conf.Network, netip.Prefix{})
	if err != nil {
		return addr, err
	}
	addr, held, err := p.find(containerID, ifname)
	p.Close()
	if err != nil {
		return addr, err
	}

	var errs []error
	hostName := HostVethName(containerID, ifname)
	hostLink, linkErr := netlink.LinkByName(hostName)
	if eps != nil {
		if held {
			errs = append(errs, eps.Delete(addr))
		}
		if linkErr == nil {
			errs = append(errs, deleteEndpointsOf(eps, hostLink.Attrs().Index))
		}
	}
	errs = append(errs, removeHostSide(conf.PinRoot, hostName))
	if eps != nil && hasServices(conf.StateDir) {
		errs = append(errs, removeHostPorts(conf, hostName, nil))
	}
	if err := errors.Join(errs...); err != nil {
		return addr, err
	}
	if held {
		p, err := openPool(conf.StateDir, conf.Network, netip.Prefix{})
		if err != nil {
			return addr, err
		}
		defer p.Close()
		if err := p.release(Allocation{Addr: addr, ContainerID: containerID, IfName: ifname}); err != nil {
			return addr, err
		}
	}
	return addr, nil
}

// deleteEndpointsOf removes every endpoint entry that points at ifindex.
func deleteEndpointsOf(eps *maps.Endpoints, ifindex int) error {
	all, err := eps.List()
	if err != nil {
		return err
	}
	var errs []error
	for _, ep := range all {
		if int(ep.Info.Ifindex) == ifindex {
			errs = append(errs, eps.Delete(ep.IP))
		}
	}
	return errors.Join(errs...)
}

// podPrograms are the programs ADD attaches to a pod's host veth, and where.
var podPrograms = []struct {
	name string
	dir  loader.Direction
}{
	{maps.ProgFromPod, loader.Ingress},
	{maps.ProgToPod, loader.Egress},
}

// removeHostSide detaches from_pod and to_pod from a host veth, unpins
// their links and deletes the veth, which deletes its pod end and its node
// route too.
func removeHostSide(pinRoot, hostName string) error {
	for _, p := range podPrograms {
		if err := loader.DetachTC(pinRoot, p.name, hostName, p.dir); err != nil {
			return err
		}
	}
	l, err := netlink.LinkByName(hostName)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find host veth %s: %w", hostName, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		if _, gone := netlink.LinkByName(hostName); errors.As(gone, &notFound) {
			return nil
		}
		return fmt.Errorf("delete host veth %s: %w", hostName, err)
	}
	return nil
}

func writeSysctl(path, value string) error {
	return os.WriteFile(path, []byte(value), 0o644)
}
