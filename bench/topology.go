package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/sim"
	"github.com/vishvananda/netlink"
)

// A contender is one way of connecting two pods on one node. Each builds its
// own fresh topology; the pod-to-pod measurements run the same client and
// server in every one. To add a contender (a kube-proxy-shaped service path,
// SNAT through MASQUERADE, ...), write a type with these two methods and
// list it in contenders; a topology whose client must talk to another
// address than the server's own (a service IP) sets topology.dst.
type contender interface {
	// name is the short label in tables and charts.
	name() string
	// build creates the topology and registers its removal with cleanup.
	build(ctx context.Context, e *env) (*topology, error)
}

// Contender names.
const (
	cLimit   = "limit"
	cDocker  = "bridge"
	cPodpath = "podpath"
	// cPodpathTraced is podpath's topology measured again, in the same
	// repetition, while podpath monitor --trace follows the client pod.
	cPodpathTraced = "podpath+trace"
)

// contenders are measured in this order (rotated every repetition).
var contenders = []contender{limitContender{}, dockerContender{}, podpathContender{}}

// endpoint is a pod as the measurements see it.
type endpoint struct {
	Name string
	NS   ns.NetNS
	IP   netip.Addr
}

// Do runs fn on a thread in the endpoint's namespace; sockets made there
// stay in it.
func (p endpoint) Do(fn func() error) error { return p.NS.Do(func(ns.NetNS) error { return fn() }) }

// topology is one contender's client pod and server pod, built.
type topology struct {
	contender      string
	client, server endpoint
	// dst is the address the client sends to: the server's own unless the
	// contender puts something (a service address) in front of it.
	dst netip.Addr
	// listenPort is the request/response server's port (0: any free one);
	// dstPort the port the client connects to (0: the server's).
	listenPort, dstPort int
	// wantPeer, if set, is the client address the server must see (the
	// client's own, or the node's when it is masqueraded).
	wantPeer netip.Addr
	// connectFailuresOK: a TCP_CRR connection that cannot be set up is
	// counted (its time stays in the rate) instead of ending the run.
	connectFailuresOK bool
	info              topologyInfo
	// path, if set, counts packets on the contender's own path, so a
	// measurement can prove its traffic took it.
	path *pathCounter
	// replyPath, if set, is the same proof for the replies where another
	// node than the client's carries them (cross-node topologies).
	replyPath *pathCounter
	// cpus, if set, pins the client and the server to a CPU each.
	cpus *cpuPin
	// extra, if set, reads further datapath counters (drops, NAT
	// statistics); a measurement records those that rose.
	extra func() map[string]uint64
	// state, if set, reads datapath state worth recording as it is after
	// each measurement (map occupancy).
	state func() map[string]uint64
	// reap, if set, does between two measurements what the node's agent
	// does every 30 s: delete expired entries (the SNAT map's).
	reap func() (int, error)
	// devices are recorded (MTU, offloads) for the fairness check.
	devices []nsDevice
	// pinRoot is podpath's node's pin root (podpath's topologies).
	pinRoot string
	// traced, if set, starts what cPodpathTraced measures under (podpath
	// monitor --trace on the client) and returns how to stop it.
	traced func(ctx context.Context) (stop func() error, err error)
	close  func() error
}

// extras reads the topology's further counters (none without extra).
func (t *topology) extras() map[string]uint64 {
	if t.extra == nil {
		return nil
	}
	return t.extra()
}

// recordExtras adds to m the further counters that rose since before and
// returns their values now, the next measurement's before.
func (t *topology) recordExtras(m *measurement, before map[string]uint64) map[string]uint64 {
	if t.extra == nil {
		return nil
	}
	now := t.extras()
	m.addExtra("datapath_counters_rose", rose(before, now))
	return now
}

// pathCounter is a counter that rises only on the contender's intended
// path: podpath's forward_local, the bridge's conntrack-accept rule.
type pathCounter struct {
	name string
	// required: a measurement whose traffic did not raise it is an error.
	required bool
	read     func() (uint64, error)
}

// topologyInfo is written to the results.
type topologyInfo struct {
	Description string                `json:"description"`
	Client      string                `json:"client"`
	Server      string                `json:"server"`
	Dst         string                `json:"dst"`
	Devices     map[string]deviceInfo `json:"devices,omitempty"`
	Notes       []string              `json:"notes,omitempty"`
}

// nsDevice is a network device in a namespace, labelled for the results.
type nsDevice struct {
	label string
	ns    ns.NetNS
	name  string
}

// deviceInfo is a device's MTU, queueing and offloads as ethtool shows
// them, and the XDP program attached to it, if any.
type deviceInfo struct {
	MTU      int               `json:"mtu"`
	TxQLen   int               `json:"txqlen"`
	Qdisc    string            `json:"qdisc,omitempty"`
	XDP      string            `json:"xdp,omitempty"`
	Features map[string]string `json:"features,omitempty"`
}

// newNS makes a namespace named pp-bench-<parts>-<pid> and registers its
// removal.
func newNS(parts ...string) (ns.NetNS, func() error, error) {
	n, err := sim.NewNetNS(append([]string{"bench"}, parts...)...)
	if err != nil {
		return nil, nil, err
	}
	rm := cleanup.add("netns "+n.Path(), func() error { return sim.RemoveNetNS(n) })
	return n, rm, nil
}

// writeSysctl sets a sysctl inside a namespace.
func writeSysctl(n ns.NetNS, key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return n.Do(func(ns.NetNS) error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}

func readSysctl(n ns.NetNS, key string) (string, error) {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	var v string
	err := n.Do(func(ns.NetNS) error {
		b, err := os.ReadFile(path)
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// runIn runs a command inside a namespace (nsenter: no /sys remount, unlike
// `ip netns exec`) and returns its output.
func runIn(ctx context.Context, n ns.NetNS, stdin string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), name}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// addVeth creates a veth pair from namespace a (end aName) to namespace b
// (end bName), both ends with the given MTU, as ip link and the CNI plugins
// create them: every other setting is the kernel's default.
func addVeth(a ns.NetNS, aName string, b ns.NetNS, bName string, mtu int) error {
	return a.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = aName, mtu
		v := &netlink.Veth{LinkAttrs: attrs, PeerName: bName, PeerMTU: uint32(mtu), PeerNamespace: netlink.NsFd(int(b.Fd()))}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("add veth %s/%s: %w", aName, bName, err)
		}
		return nil
	})
}

// configureIf gives a device an address (prefix) and brings it up.
func configureIf(n ns.NetNS, dev string, addr netip.Prefix) error {
	return n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("%s: %w", dev, err)
		}
		if addr.IsValid() {
			a := &netlink.Addr{IPNet: prefixIPNet(addr)}
			if err := netlink.AddrAdd(l, a); err != nil {
				return fmt.Errorf("address %s on %s: %w", addr, dev, err)
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("up %s: %w", dev, err)
		}
		return nil
	})
}

// deviceInfos reads MTU, queue length, qdisc and offloads of devices.
func deviceInfos(ctx context.Context, devs []nsDevice) map[string]deviceInfo {
	out := map[string]deviceInfo{}
	for _, d := range devs {
		var di deviceInfo
		d.ns.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName(d.name)
			if err != nil {
				return err
			}
			di.MTU, di.TxQLen = l.Attrs().MTU, l.Attrs().TxQLen
			if qs, err := netlink.QdiscList(l); err == nil && len(qs) > 0 {
				di.Qdisc = qs[0].Type()
			}
			di.XDP = xdpInfo(l.Attrs().Xdp)
			return nil
		})
		di.Features = offloads(ctx, d.ns, d.name)
		out[d.label] = di
	}
	return out
}

// offloadKeys are the ethtool features that change how packets cross a veth.
var offloadKeys = []string{
	"rx-checksumming", "tx-checksumming", "scatter-gather",
	"tcp-segmentation-offload", "generic-segmentation-offload",
	"generic-receive-offload", "rx-gro-list", "rx-udp-gro-forwarding",
	"large-receive-offload", "tx-vlan-offload",
}

func offloads(ctx context.Context, n ns.NetNS, dev string) map[string]string {
	out, err := runIn(ctx, n, "", "ethtool", "-k", dev)
	if err != nil {
		return map[string]string{"error": "ethtool unavailable: " + firstLine(err.Error())}
	}
	f := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		for _, want := range offloadKeys {
			if k == want {
				f[k] = strings.TrimSpace(v)
			}
		}
	}
	return f
}

// xdpInfo names the XDP program attached to a device and how, "" for none.
func xdpInfo(x *netlink.LinkXdp) string {
	if x == nil || !x.Attached {
		return ""
	}
	mode := map[uint32]string{1: "driver", 2: "generic", 3: "offload", 4: "multi"}[x.AttachMode]
	name := ""
	if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(x.ProgId)); err == nil {
		if info, err := p.Info(); err == nil {
			name = info.Name + " "
		}
		p.Close()
	}
	return fmt.Sprintf("%s(id %d, %s mode)", name, x.ProgId, mode)
}

// fairness compares the offloads and MTUs of the pods' interfaces across
// topologies and returns what differs.
func fairness(topos []*topology) []string {
	return fairnessOf(topos, []string{"client eth0", "server eth0"})
}

// fairnessOf compares MTU, offloads and XDP of the devices with the given
// labels across topologies (each against the first topology that has it)
// and returns what differs.
func fairnessOf(topos []*topology, roles []string) []string {
	var notes []string
	for _, role := range roles {
		var ref *deviceInfo
		var refName string
		for _, t := range topos {
			d, ok := t.info.Devices[role]
			if !ok {
				continue
			}
			if ref == nil {
				ref, refName = &d, t.contender
				continue
			}
			if d.MTU != ref.MTU {
				notes = append(notes, fmt.Sprintf("%s MTU: %s %d, %s %d", role, refName, ref.MTU, t.contender, d.MTU))
			}
			if d.XDP != ref.XDP {
				notes = append(notes, fmt.Sprintf("%s XDP: %s %q, %s %q", role, refName, ref.XDP, t.contender, d.XDP))
			}
			for k, v := range d.Features {
				if ref.Features[k] != v {
					notes = append(notes, fmt.Sprintf("%s %s: %s %q, %s %q", role, k, refName, ref.Features[k], t.contender, v))
				}
			}
		}
	}
	return notes
}

// buildTopologies builds every contender's topology.
func (e *env) buildTopologies(ctx context.Context) ([]*topology, error) {
	if e.topos != nil {
		return e.topos, nil
	}
	pin, err := pinnedCPUs()
	if err != nil {
		return nil, err
	}
	for _, c := range contenders {
		t0 := time.Now()
		t, err := c.build(ctx, e)
		if err != nil {
			return nil, fmt.Errorf("build %s topology: %w", c.name(), err)
		}
		t.cpus = pin
		e.topos = append(e.topos, t)
		t.info.Client = t.client.IP.String()
		t.info.Server = t.server.IP.String()
		t.info.Dst = t.dst.String()
		if e.vethGRO {
			if err := enableGRO(ctx, t); err != nil {
				return nil, err
			}
		}
		t.info.Devices = deviceInfos(ctx, t.devices)
		if e.res.Topologies == nil {
			e.res.Topologies = map[string]topologyInfo{}
		}
		e.res.Topologies[t.contender] = t.info
		slog.Info("topology up", "contender", t.contender, "took", time.Since(t0).Round(time.Millisecond))
	}
	for _, n := range fairness(e.topos) {
		e.res.Notes = append(e.res.Notes, "topologies differ: "+n)
		slog.Warn("topologies differ", "what", n)
	}
	return e.topos, nil
}

// closeTopologies removes every topology.
func (e *env) closeTopologies() error {
	var errs []error
	for _, t := range e.topos {
		if err := t.close(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.contender, err))
		}
	}
	e.topos = nil
	return errors.Join(errs...)
}

// rotate returns the topologies starting at a different one each
// repetition, so slow drift of a noisy machine is spread over all of them.
func rotate[T any](s []T, rep int) []T {
	if len(s) == 0 {
		return s
	}
	k := rep % len(s)
	return append(append([]T{}, s[k:]...), s[:k]...)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// enableGRO turns GRO on for every veth of a topology (-veth-gro): veth
// then receives through its own NAPI queue instead of the per-CPU backlog.
func enableGRO(ctx context.Context, t *topology) error {
	for _, d := range t.devices {
		if d.name == "docker0" {
			continue
		}
		if _, err := runIn(ctx, d.ns, "", "ethtool", "-K", d.name, "gro", "on"); err != nil {
			return fmt.Errorf("%s: %w", t.contender, err)
		}
	}
	t.info.Notes = append(t.info.Notes, "GRO turned on for every veth (-veth-gro)")
	return nil
}
