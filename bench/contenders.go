package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// mtu is every topology's MTU, pods and node devices alike.
const mtu = 1500

// limitContender: two namespaces joined by one veth pair, nothing between.
type limitContender struct{}

func (limitContender) name() string { return cLimit }

func (limitContender) build(ctx context.Context, e *env) (_ *topology, err error) {
	t := &topology{contender: cLimit, info: topologyInfo{
		Description: "client and server namespaces joined by one veth pair, one /24, nothing in between",
	}}
	var closers []func() error
	t.close = func() error { return closeAll(closers) }
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	cli, rmCli, err := newNS("limit", "client")
	if err != nil {
		return nil, err
	}
	closers = append(closers, rmCli)
	srv, rmSrv, err := newNS("limit", "server")
	if err != nil {
		return nil, err
	}
	closers = append(closers, rmSrv)
	t.client = endpoint{Name: "limit-client", NS: cli, IP: netip.MustParseAddr("10.200.0.1")}
	t.server = endpoint{Name: "limit-server", NS: srv, IP: netip.MustParseAddr("10.200.0.2")}
	t.dst = t.server.IP
	if err := addVeth(cli, "eth0", srv, "eth0", mtu); err != nil {
		return nil, err
	}
	for _, p := range []endpoint{t.client, t.server} {
		if err := configureIf(p.NS, "eth0", netip.PrefixFrom(p.IP, 24)); err != nil {
			return nil, err
		}
	}
	t.devices = []nsDevice{{"client eth0", cli, "eth0"}, {"server eth0", srv, "eth0"}}
	return t, nil
}

// dockerContender: Docker's default network. A node namespace holds a
// bridge (docker0, 172.17.0.1/16, the pods' gateway) with two pod veths on
// it, br_netfilter on with bridge-nf-call-iptables=1, ip_forward=1, and the
// iptables rules Docker writes for its default bridge.
type dockerContender struct{}

func (dockerContender) name() string { return cDocker }

// dockerRules are Docker's rules for the default bridge (docker0,
// 172.17.0.0/16) with no published ports, as `iptables-save` shows them on
// a Docker 24 host.
const dockerRules = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
`

func (dockerContender) build(ctx context.Context, e *env) (_ *topology, err error) {
	t := &topology{contender: cDocker, info: topologyInfo{
		Description: "Docker default bridge: node netns with docker0 (172.17.0.1/16, gateway), two pod veths on it, " +
			"br_netfilter with bridge-nf-call-iptables=1, ip_forward=1, Docker's filter/nat rules loaded with iptables-restore",
	}}
	var closers []func() error
	t.close = func() error { return closeAll(closers) }
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	br, err := newBridgeNode(e, "bridge", []string{"client", "server"}, &closers)
	if err != nil {
		return nil, err
	}
	t.client, t.server = br.pods[0], br.pods[1]
	t.devices = br.devices
	t.dst = t.server.IP
	t.info.Notes = append(t.info.Notes, "br_netfilter: "+br.brnf.status)
	if _, err := runIn(ctx, br.node, dockerRules, "iptables-restore"); err != nil {
		return nil, fmt.Errorf("load Docker's rules: %w", err)
	}
	backend, _ := runIn(ctx, br.node, "", "iptables", "--version")
	t.info.Notes = append(t.info.Notes, "rules loaded with "+strings.TrimSpace(backend))
	node := br.node
	t.path = &pathCounter{
		name:     "forward_conntrack_accept_pkts",
		required: br.brnf.active,
		read:     func() (uint64, error) { return ruleCounter(ctx, node, "RELATED,ESTABLISHED") },
	}
	return t, nil
}

// bridgeNode is Docker's default network without its rules: a node
// namespace with docker0 (172.17.0.1/16, the pods' gateway), one pod
// namespace per role with its veth on the bridge, ip_forward=1 and
// br_netfilter on in the node namespace.
type bridgeNode struct {
	node    ns.NetNS
	pods    []endpoint // 172.17.0.2, .3, ... in the order of the roles
	brnf    brNetfilter
	devices []nsDevice
}

// newBridgeNode builds a bridgeNode whose namespaces are named
// pp-bench-<label>-<role>-<pid>; their removal goes on closers.
func newBridgeNode(e *env, label string, roles []string, closers *[]func() error) (*bridgeNode, error) {
	node, rm, err := newNS(label, "node")
	if err != nil {
		return nil, err
	}
	*closers = append(*closers, rm)
	b := &bridgeNode{node: node}
	gw := netip.MustParsePrefix("172.17.0.1/16")
	if err := addBridge(node, "docker0", gw, mtu); err != nil {
		return nil, err
	}
	for i, role := range roles {
		host := "veth" + role
		p, err := addBridgedPod(node, "docker0", host, label, role, netip.AddrFrom4([4]byte{172, 17, 0, byte(2 + i)}), gw, mtu, closers)
		if err != nil {
			return nil, err
		}
		b.pods = append(b.pods, p)
		b.devices = append(b.devices,
			nsDevice{role + " eth0", p.NS, "eth0"},
			nsDevice{"node " + host, node, host})
	}
	b.devices = append(b.devices, nsDevice{"node docker0", node, "docker0"})

	if err := writeSysctl(node, "net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	b.brnf = enableBrNetfilter(node)
	if !b.brnf.active {
		e.res.Notes = append(e.res.Notes, label+" topology ran WITHOUT br_netfilter: "+b.brnf.status)
	}
	return b, nil
}

// addBridge creates a bridge in a node namespace with the pods' gateway
// address gw, and brings it up.
func addBridge(node ns.NetNS, name string, gw netip.Prefix, mtu int) error {
	err := node.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = name, mtu
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return fmt.Errorf("add bridge %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return configureIf(node, name, gw)
}

// addBridgedPod makes a pod namespace pp-bench-<label>-<role>-<pid> (its
// removal goes on closers) joined to the node's bridge by a veth (host end
// host, pod end eth0, both with the given MTU), with address ip in gw's
// subnet and a default route via gw, as the bridge CNI plugin leaves a pod.
func addBridgedPod(node ns.NetNS, bridge, host, label, role string, ip netip.Addr, gw netip.Prefix, mtu int, closers *[]func() error) (endpoint, error) {
	pns, rm, err := newNS(label, role)
	if err != nil {
		return endpoint{}, err
	}
	*closers = append(*closers, rm)
	p := endpoint{Name: label + "-" + role, NS: pns, IP: ip}
	if err := addVeth(node, host, pns, "eth0", mtu); err != nil {
		return endpoint{}, err
	}
	err = node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(host)
		if err != nil {
			return err
		}
		br, err := netlink.LinkByName(bridge)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("%s master %s: %w", host, bridge, err)
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return endpoint{}, err
	}
	if err := configureIf(pns, "eth0", netip.PrefixFrom(ip, gw.Bits())); err != nil {
		return endpoint{}, err
	}
	err = pns.Do(func(ns.NetNS) error {
		return netlink.RouteAdd(&netlink.Route{Gw: net.IP(gw.Addr().AsSlice())})
	})
	if err != nil {
		return endpoint{}, fmt.Errorf("default route in %s: %w", role, err)
	}
	return p, nil
}

type brNetfilter struct {
	active bool
	status string
}

// enableBrNetfilter makes bridged IPv4 traffic traverse iptables in the
// node namespace, as Docker does: load br_netfilter (modprobe, when the
// kernel has modules) and set bridge-nf-call-iptables=1 there (per netns).
func enableBrNetfilter(node ns.NetNS) brNetfilter {
	const key = "net.bridge.bridge-nf-call-iptables"
	how := "built into the kernel"
	if _, err := os.Stat("/proc/sys/net/bridge"); err != nil {
		out, err := exec.Command("modprobe", "br_netfilter").CombinedOutput()
		if err != nil {
			return brNetfilter{status: fmt.Sprintf("cannot be loaded (modprobe br_netfilter: %v %s)", err, strings.TrimSpace(string(out)))}
		}
		how = "loaded with modprobe"
	}
	if err := writeSysctl(node, key, "1"); err != nil {
		return brNetfilter{status: fmt.Sprintf("%s, but %v", how, err)}
	}
	v, err := readSysctl(node, key)
	if err != nil || v != "1" {
		return brNetfilter{status: fmt.Sprintf("%s, but %s reads %q (%v)", how, key, v, err)}
	}
	return brNetfilter{active: true, status: how + ", " + key + "=1 in the node netns"}
}

var counterRE = regexp.MustCompile(`^\[(\d+):(\d+)\]`)

// ruleCounter is the packet count of the filter rule containing match.
func ruleCounter(ctx context.Context, n ns.NetNS, match string) (uint64, error) {
	out, err := runIn(ctx, n, "", "iptables-save", "-c", "-t", "filter")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, match) {
			continue
		}
		if m := counterRE.FindStringSubmatch(line); m != nil {
			return strconv.ParseUint(m[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no rule matching %q", match)
}

// podpathContender: a sim node with podpath's datapath loaded and two pods
// added through the real podpath-cni binary.
type podpathContender struct{}

func (podpathContender) name() string { return cPodpath }

func (podpathContender) build(ctx context.Context, e *env) (_ *topology, err error) {
	return e.podpathTopology(ctx, "pp")
}

// podpathTopology builds podpath's pod-to-pod topology on a sim node named
// bench-<name> (families that need one of their own name theirs apart).
func (e *env) podpathTopology(ctx context.Context, name string) (_ *topology, err error) {
	bin, err := e.podpathCNI()
	if err != nil {
		return nil, err
	}
	node, closeNode, err := newSimNode(name, netip.MustParsePrefix("10.244.0.0/16"), sim.WithCNIBin(bin), sim.WithMTU(mtu))
	if err != nil {
		return nil, err
	}
	t := &topology{contender: cPodpath, close: closeNode, info: topologyInfo{
		Description: "podpath: sim node (podpath node init in a node netns, ip_forward=0), two pods added by podpath-cni " +
			"through libcni; from_pod at the host veths' tc ingress redirects pod to pod with bpf_redirect_peer",
	}}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	pods := []*endpoint{&t.client, &t.server}
	for i, role := range []string{"client", "server"} {
		p, err := node.AddPod(ctx, role)
		if err != nil {
			return nil, err
		}
		*pods[i] = endpoint{Name: "podpath-" + role, NS: p.NS, IP: p.IP}
		t.devices = append(t.devices, nsDevice{role + " eth0", p.NS, sim.IfName})
		for _, iface := range p.Result.Interfaces {
			if iface.Sandbox == "" {
				t.devices = append(t.devices, nsDevice{"node " + role + " veth", node.NS, iface.Name})
			}
		}
	}
	t.dst = t.server.IP
	t.info.Notes = append(t.info.Notes, "pin root "+node.PinRoot)
	t.pinRoot = node.PinRoot
	cli, err := sim.BuildPodpath(filepath.Join(e.srcDir, ".cache", "podpath-cli"))
	if err != nil {
		return nil, err
	}
	t.traced = func(ctx context.Context) (func() error, error) {
		return startMonitor(ctx, cli, node, "--trace", t.client.IP.String(), "-o", "json")
	}
	counters, err := maps.OpenPinned(node.PinRoot, maps.MapCounters)
	if err != nil {
		return nil, err
	}
	t.close = closeAllFn(func() error { return counters.Close() }, closeNode)
	t.path = &pathCounter{
		name:     "from_pod_forward_local_pkts",
		required: true,
		read: func() (uint64, error) {
			cs, err := maps.ReadCounters(counters)
			if err != nil {
				return 0, err
			}
			for _, c := range cs {
				if c.Hook == maps.HookFromPod && c.Reason == maps.ReasonForwardLocal {
					return c.Packets, nil
				}
			}
			return 0, nil
		},
	}
	return t, nil
}

// newSimNode creates a podpath sim node named bench-<name> and registers
// its removal.
func newSimNode(name string, cidr netip.Prefix, opts ...sim.Option) (*sim.Node, func() error, error) {
	opts = append([]sim.Option{sim.WithPluginStderr(discard)}, opts...)
	node, err := sim.NewNode("bench-"+name, cidr, opts...)
	if err != nil {
		return nil, nil, err
	}
	return node, cleanup.add("sim node "+node.Name, node.Close), nil
}

// podpathCNI builds podpath-cni once per run into bench/.cache.
func (e *env) podpathCNI() (string, error) {
	return sim.BuildCNI(filepath.Join(e.srcDir, ".cache", "podpath-cni"))
}

func closeAll(fns []func() error) error {
	var errs []error
	for i := len(fns) - 1; i >= 0; i-- {
		errs = append(errs, fns[i]())
	}
	return errors.Join(errs...)
}

func closeAllFn(fns ...func() error) func() error {
	return func() error { return closeAll(fns) }
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// startMonitor runs podpath monitor with args in node's namespace, its
// output read and discarded as a terminal would take it, and returns once
// it reads the events; stop interrupts it and waits for its exit.
func startMonitor(ctx context.Context, bin string, node *sim.Node, args ...string) (stop func() error, err error) {
	cmd := exec.CommandContext(ctx, bin, append([]string{"--pin-root", node.PinRoot, "--state-dir", node.StateDir, "monitor"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errOut, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := node.Do(cmd.Start); err != nil {
		return nil, err
	}
	go io.Copy(io.Discard, out)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(errOut)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "reading the drop events of ") {
				close(ready)
			}
		}
	}()
	stop = func() error {
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			return err
		}
		return cmd.Wait()
	}
	select {
	case <-ready:
		return stop, nil
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("podpath monitor %v did not start reading within 30 s", args)
	}
}
