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
func Del(args *skel.CmdArgs) (err error) {
	st := newStepTimer("DEL", args.ContainerID)
	defer func() { st.done(err) }()
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
	st.step("open_datapath")
	// Held to the end: an ADD of this attachment still running (its
	// runtime gave up waiting) finishes first, and GC keeps off.
	hostName := HostVethName(args.ContainerID, args.IfName)
	lock, err := lockAttachment(conf.StateDir, conf.Network, hostName, true)
	if err != nil {
		return err
	}
	defer lock.Close()
	st.step("lock")

	p, err := openPool(conf.StateDir, conf.Network, netip.Prefix{})
	if err != nil {
		return err
	}
	addr, held, err := p.find(args.ContainerID, args.IfName)
	p.Close()
	if err != nil {
		return err
	}
	st.step("find_address")
	if err := removeAttachment(conf, eps, hostName, addr); err != nil {
		return err
	}
	st.step("remove")
	// The address goes last, so it is never handed to a new pod while the
	// old one's entry still names it.
	if held {
		if p, err = openPool(conf.StateDir, conf.Network, netip.Prefix{}); err != nil {
			return err
		}
		defer p.Close()
		if err := p.release(Allocation{Addr: addr, ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
			return err
		}
		st.step("release")
	}
	slog.Info("pod deleted", "pod", pa.String(), "container", args.ContainerID, "ifname", args.IfName, "ip", addr)
	return nil
}

// removeAttachment removes what an attachment has on the node but its
// address: the attached programs, the host veth (with the pod end and the
// node route), then the endpoint entry of addr (when valid) and any other
// naming the veth, and the hostPorts. The programs go first: a packet the
// pod still sends (a closing socket's FIN or RST) must not meet from_pod
// once its entry is gone, which would count it as spoofed.
func removeAttachment(conf *Config, eps *maps.Endpoints, hostName string, addr netip.Addr) error {
	var errs []error
	if addr.IsValid() {
		errs = append(errs, loader.ForgetPod(conf.StateDir, addr))
	}
	hostLink, linkErr := netlink.LinkByName(hostName)
	errs = append(errs, removeHostSide(conf.PinRoot, hostName), forgetDeferred(conf.StateDir, hostName))
	if eps != nil {
		if addr.IsValid() {
			errs = append(errs, eps.Delete(addr))
		}
		if linkErr == nil {
			errs = append(errs, deleteEndpointsOf(eps, hostLink.Attrs().Index))
		}
	}
	if eps != nil && hasServices(conf.StateDir) {
		errs = append(errs, removeHostPorts(conf, hostName))
	}
	return errors.Join(errs...)
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
