package cni

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// undoStack runs, in reverse, the clean-ups of what an ADD did before it
// failed, so a failed ADD leaves nothing behind.
type undoStack []func()

func (u *undoStack) push(f func()) { *u = append(*u, f) }

func (u *undoStack) run() {
	for i := len(*u) - 1; i >= 0; i-- {
		(*u)[i]()
	}
	*u = nil
}

// PauseEnv, set to one of Steps, holds ADD right after that step: the
// plugin logs msg=paused and waits for SIGCONT. Tests hold an ADD at a known
// point with it, act (run GC, look at what the step left), then resume the
// plugin or kill it.
const PauseEnv = "PODPATH_CNI_PAUSE_AT"

// The points of ADD that PauseEnv can name; each is reached once what it
// names is done.
const (
	StepAllocated = "allocated" // the address is recorded, nothing else exists
	StepVeth      = "veth"      // the veth pair exists, neither labelled nor up
	StepPod       = "pod"       // the pod end is configured, the node route added
	StepEndpoint  = "endpoint"  // the endpoint entry is written
	StepAttached  = "attached"  // from_pod and to_pod are attached
)

// Steps are those points in the order ADD passes them.
var Steps = []string{StepAllocated, StepVeth, StepPod, StepEndpoint, StepAttached}

func pauseAt(step string) {
	if os.Getenv(PauseEnv) != step {
		return
	}
	// Not SIGSTOP: a Go process that stops itself is at times found
	// running again with no SIGCONT sent.
	cont := make(chan os.Signal, 1)
	signal.Notify(cont, unix.SIGCONT)
	defer signal.Stop(cont)
	slog.Info("paused", "step", step)
	<-cont
}

// podSide is what ADD learns inside the pod's namespace.
type podSide struct {
	podMAC net.HardwareAddr
	cookie uint64
}

// Add connects a pod: a veth pair whose pod end carries a /32 from the pool
// and routes everything to a link-local gateway that is the host end, the
// pod registered in the endpoints map, and from_pod (tc ingress) and to_pod
// (tc egress) attached to the host end.
func Add(args *skel.CmdArgs) (err error) {
	st := newStepTimer("ADD", args.ContainerID)
	defer func() { st.done(err) }()
	conf, err := ParseConfig(args.StdinData, true)
	if err != nil {
		return err
	}
	pa, err := parseArgs(args.Args)
	if err != nil {
		return err
	}
	if conf.PrevResult != nil {
		for _, intf := range conf.PrevResult.Interfaces {
			if intf.Name == args.IfName && intf.Sandbox != "" {
				return invalidConfig("interface %s of the pod was already created by a previous plugin in the chain: podpath must create it (put podpath first)", args.IfName)
			}
		}
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return newError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS %q: %v", args.Netns, err)
	}
	defer podNS.Close()
	st.step("parse")

	// Open the datapath first: a node without one gets a clear error and
	// nothing is allocated.
	eps, err := maps.OpenEndpoints(conf.PinRoot)
	if err != nil {
		return datapathError(err)
	}
	defer eps.Close()
	network, err := registerNetwork(conf)
	if err != nil {
		return err
	}
	progs := make([]*ebpf.Program, len(podPrograms))
	for i, p := range podPrograms {
		if progs[i], err = loader.LoadPinnedProgram(conf.PinRoot, p.name); err != nil {
			return datapathError(err)
		}
		defer progs[i].Close()
	}
	st.step("open_datapath")

	// Held until ADD returns or dies: a DEL of the attachment waits for it,
	// and GC leaves alone what it is making.
	hostName := HostVethName(args.ContainerID, args.IfName)
	lock, err := lockAttachment(conf.StateDir, conf.Network, hostName, true)
	if err != nil {
		return err
	}
	defer lock.Close()
	st.step("lock")

	var undo undoStack
	defer func() {
		if err != nil {
			undo.run()
		}
	}()

	addr, err := allocate(conf, args.ContainerID, args.IfName, &undo)
	if err != nil {
		return err
	}
	pauseAt(StepAllocated)
	st.step("allocate")

	// A repeated ADD replaces the interfaces of the previous one; deleting
	// the host end takes the pod end and the node route with it.
	if err := removeHostSide(conf.PinRoot, hostName); err != nil {
		return err
	}
	undo.push(func() {
		if err := removeHostSide(conf.PinRoot, hostName); err != nil {
			slog.Warn("undo: remove host veth", "veth", hostName, "err", err)
		}
	})

	hostLink, err := createVeth(hostName, args.IfName, conf.MTU, podNS)
	if err != nil {
		return err
	}
	pauseAt(StepVeth)
	disableIPv6(hostName)
	if err := netlink.LinkSetAlias(hostLink, vethAlias(conf.Network)); err != nil {
		return fmt.Errorf("label host veth %s: %w", hostName, err)
	}
	if err := netlink.LinkSetUp(hostLink); err != nil {
		return fmt.Errorf("set host veth %s up: %w", hostName, err)
	}
	if hostLink, err = netlink.LinkByIndex(hostLink.Attrs().Index); err != nil {
		return fmt.Errorf("find host veth %s: %w", hostName, err)
	}
	hostMAC := hostLink.Attrs().HardwareAddr
	st.step("veth")

	var ps podSide
	err = podNS.Do(func(ns.NetNS) error {
		var err error
		ps, err = setupPod(conf, args.IfName, addr, hostMAC)
		return err
	})
	if err != nil {
		return err
	}

	if err := netlink.RouteReplace(nodeRoute(addr, hostLink.Attrs().Index)); err != nil {
		return fmt.Errorf("add node route %s dev %s: %w", addr, hostName, err)
	}
	pauseAt(StepPod)
	st.step("pod_interface")

	info := maps.NewEndpointInfo(uint32(hostLink.Attrs().Index), ps.podMAC, hostMAC, ps.cookie)
	info.Network = network
	pending := conf.PolicyPending && pa.K8S_POD_NAME != ""
	if pending {
		// Closed until the agent has written the pod's policy.
		info.Flags |= maps.EndpointPolicyIngress | maps.EndpointPolicyEgress | maps.EndpointPolicyPending
		if err := loader.RecordPod(conf.StateDir, addr, string(pa.K8S_POD_NAMESPACE), string(pa.K8S_POD_NAME)); err != nil {
			return fmt.Errorf("record pod %s: %w", pa, err)
		}
		undo.push(func() { loader.ForgetPod(conf.StateDir, addr) })
	}
	if err := eps.Put(addr, info); err != nil {
		return datapathError(err)
	}
	undo.push(func() {
		if err := eps.Delete(addr); err != nil {
			slog.Warn("undo: delete endpoint", "ip", addr, "err", err)
		}
	})
	pauseAt(StepEndpoint)
	st.step("endpoint")

	// A failed ADD detaches them again with removeHostSide (undo above).
	attachMode := conf.TCAttach
	deferred, err := deferTCX(conf)
	if err != nil {
		return err
	}
	if deferred {
		attachMode = loader.ModeLegacyTC
		if err := recordDeferred(conf.StateDir, conf.Network, hostName); err != nil {
			return fmt.Errorf("record %s for tcx: %w", hostName, err)
		}
		undo.push(func() { forgetDeferred(conf.StateDir, hostName) })
	}
	var mode string
	for i, p := range podPrograms {
		if mode, err = loader.AttachTC(conf.PinRoot, attachMode, p.name, progs[i], hostLink.Attrs().Index, p.dir); err != nil {
			return err
		}
	}
	pauseAt(StepAttached)
	st.step("attach")

	if err := addHostPorts(conf, hostName, addr); err != nil {
		return err
	}
	undo.push(func() {
		if err := removeHostPorts(conf, hostName); err != nil {
			slog.Warn("undo: remove hostPorts", "veth", hostName, "err", err)
		}
	})

	st.step("hostports")
	if pending {
		waitPolicy(eps, addr, pa.String())
		st.step("policy_wait")
	}
	result := buildResult(conf, args, hostName, hostMAC, ps.podMAC, addr)
	slog.Info("pod added", "pod", pa.String(), "container", args.ContainerID, "ifname", args.IfName,
		"ip", addr, "veth", hostName, "ifindex", hostLink.Attrs().Index, "attach", mode)
	return types.PrintResult(result, conf.CNIVersion)
}

// policyWait bounds how long ADD waits for the agent to write a new pod's
// policy. Past it, ADD succeeds and the pod stays closed until the agent
// catches up: never open.
const policyWait = 10 * time.Second

// waitPolicy waits until the agent has cleared the endpoint's pending flag.
func waitPolicy(eps *maps.Endpoints, addr netip.Addr, pod string) {
	start := time.Now()
	for {
		info, ok, err := eps.Lookup(addr)
		if err != nil || !ok || info.Flags&maps.EndpointPolicyPending == 0 {
			slog.Debug("policy written", "pod", pod, "ip", addr, "waited", time.Since(start))
			return
		}
		if time.Since(start) > policyWait {
			slog.Warn("the agent has not written the pod's policy yet; it stays closed until then", "pod", pod, "ip", addr, "waited", time.Since(start))
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// registerNetwork writes the network and what it reaches into the
// datapath, before any of its pods can send, and returns its id. The
// network stays when its last pod goes: an entry is a few bytes, and a
// pod's DEL racing another's ADD must not leave the ADD's pod isolated
// from everything.
func registerNetwork(conf *Config) (uint32, error) {
	nws, err := maps.OpenNetworks(conf.PinRoot)
	if err != nil {
		return 0, datapathError(err)
	}
	defer nws.Close()
	id, err := nws.Put(conf.Network, conf.Reaches)
	if errors.Is(err, maps.ErrNetworkIDTaken) {
		return 0, invalidConfig("%v", err)
	}
	if err != nil {
		return 0, datapathError(err)
	}
	return id, nil
}

// allocate reserves the attachment's address, and undoes only a reservation
// this ADD made: a repeated ADD keeps the address it had.
func allocate(conf *Config, containerID, ifname string, undo *undoStack) (netip.Addr, error) {
	p, err := openPool(conf.StateDir, conf.Network, conf.PodCIDR)
	if err != nil {
		return netip.Addr{}, err
	}
	defer p.Close()
	addr, fresh, err := p.allocate(containerID, ifname, conf.Gateway)
	if err != nil {
		return addr, err
	}
	if fresh {
		undo.push(func() {
			p, err := openPool(conf.StateDir, conf.Network, conf.PodCIDR)
			if err == nil {
				err = p.release(Allocation{Addr: addr, ContainerID: containerID, IfName: ifname})
				p.Close()
			}
			if err != nil {
				slog.Warn("undo: release address", "ip", addr, "err", err)
			}
		})
	}
	return addr, nil
}

// createVeth creates the veth pair from the node's namespace, the pod end
// born inside the pod's namespace under its final name, so a name taken in
// either namespace fails the ADD before anything is half made.
func createVeth(hostName, ifname string, mtu int, podNS ns.NetNS) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = mtu
	veth := &netlink.Veth{
		LinkAttrs:     attrs,
		PeerName:      ifname,
		PeerMTU:       uint32(mtu),
		PeerNamespace: netlink.NsFd(int(podNS.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, newError(types.ErrInvalidNetworkConfig, "create veth %s/%s: a device %s already exists in the node or %s in the pod", hostName, ifname, hostName, ifname)
		}
		return nil, fmt.Errorf("create veth %s/%s: %w", hostName, ifname, err)
	}
	l, err := netlink.LinkByName(hostName)
	if err != nil {
		return nil, fmt.Errorf("find host veth %s: %w", hostName, err)
	}
	return l, nil
}

// setupPod runs inside the pod's namespace: it gives the pod end its
// address, routes and a permanent neighbour entry for the gateway.
func setupPod(conf *Config, ifname string, addr netip.Addr, hostMAC net.HardwareAddr) (podSide, error) {
	var ps podSide
	podLink, err := netlink.LinkByName(ifname)
	if err != nil {
		return ps, fmt.Errorf("find %s in the pod: %w", ifname, err)
	}
	ps.podMAC = podLink.Attrs().HardwareAddr
	// podpath routes IPv4 only: an IPv6 link-local address would only send
	// router solicitations that from_pod drops.
	disableIPv6(ifname)
	if err := netlink.LinkSetUp(podLink); err != nil {
		return ps, fmt.Errorf("set %s up in the pod: %w", ifname, err)
	}
	if err := netlink.AddrAdd(podLink, &netlink.Addr{IPNet: hostPrefix(addr)}); err != nil {
		return ps, fmt.Errorf("add address %s to %s: %w", addr, ifname, err)
	}
	idx := podLink.Attrs().Index
	if err := netlink.RouteReplace(gatewayRoute(conf.Gateway, idx)); err != nil {
		return ps, fmt.Errorf("add route to gateway %s dev %s: %w", conf.Gateway, ifname, err)
	}
	if err := netlink.RouteReplace(defaultRoute(conf.Gateway, idx)); err != nil {
		return ps, fmt.Errorf("add default route via %s: %w", conf.Gateway, err)
	}
	if err := netlink.NeighSet(gatewayNeigh(conf.Gateway, idx, hostMAC)); err != nil {
		return ps, fmt.Errorf("add neighbour %s lladdr %s: %w", conf.Gateway, hostMAC, err)
	}
	// Kernels before 5.14 cannot name a namespace: the entry says 0.
	ps.cookie, err = loader.NetnsCookie()
	if err != nil && !errors.Is(err, loader.ErrNoNetnsCookie) {
		return ps, err
	}
	return ps, nil
}

func disableIPv6(ifname string) {
	path := "/proc/sys/net/ipv6/conf/" + ifname + "/disable_ipv6"
	if err := writeSysctl(path, "1"); err != nil && !errors.Is(err, unix.ENOENT) {
		slog.Debug("disable IPv6", "ifname", ifname, "err", err)
	}
}

func hostPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func gatewayRoute(gw netip.Addr, ifindex int) *netlink.Route {
	return &netlink.Route{LinkIndex: ifindex, Dst: hostPrefix(gw), Scope: netlink.SCOPE_LINK}
}

func defaultRoute(gw netip.Addr, ifindex int) *netlink.Route {
	return &netlink.Route{
		LinkIndex: ifindex,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        net.IP(gw.AsSlice()),
		Flags:     int(netlink.FLAG_ONLINK),
		Scope:     netlink.SCOPE_UNIVERSE,
	}
}

func gatewayNeigh(gw netip.Addr, ifindex int, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    ifindex,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(gw.AsSlice()),
		HardwareAddr: mac,
	}
}

func nodeRoute(pod netip.Addr, ifindex int) *netlink.Route {
	return &netlink.Route{LinkIndex: ifindex, Dst: hostPrefix(pod), Scope: netlink.SCOPE_LINK}
}

// buildResult is the ADD result: the host veth, the pod interface, the pod's
// address on interface 1, and the default route through the gateway, after
// whatever the previous plugins in the chain reported.
func buildResult(conf *Config, args *skel.CmdArgs, hostName string, hostMAC, podMAC net.HardwareAddr, addr netip.Addr) *types100.Result {
	r := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
	if conf.PrevResult != nil {
		r.Interfaces = append(r.Interfaces, conf.PrevResult.Interfaces...)
		r.IPs = append(r.IPs, conf.PrevResult.IPs...)
		r.Routes = append(r.Routes, conf.PrevResult.Routes...)
		r.DNS = conf.PrevResult.DNS
	}
	podIndex := len(r.Interfaces) + 1
	mtu := 0 // interface MTUs are part of results from CNI 1.1.0 on
	if newer, _ := version.GreaterThanOrEqualTo(conf.CNIVersion, "1.1.0"); newer {
		mtu = conf.MTU
	}
	r.Interfaces = append(r.Interfaces,
		&types100.Interface{Name: hostName, Mac: hostMAC.String(), Mtu: mtu},
		&types100.Interface{Name: args.IfName, Mac: podMAC.String(), Mtu: mtu, Sandbox: args.Netns},
	)
	r.IPs = append(r.IPs, &types100.IPConfig{
		Interface: &podIndex,
		Address:   *hostPrefix(addr),
		Gateway:   net.IP(conf.Gateway.AsSlice()),
	})
	hasDefault := false
	for _, rt := range r.Routes {
		if ones, _ := rt.Dst.Mask.Size(); ones == 0 && rt.Dst.IP.To4() != nil {
			hasDefault = true
		}
	}
	if !hasDefault {
		r.Routes = append(r.Routes, &types.Route{
			Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			GW:  net.IP(conf.Gateway.AsSlice()),
		})
	}
	if !conf.DNS.IsEmpty() {
		r.DNS = conf.DNS
	}
	return r
}
