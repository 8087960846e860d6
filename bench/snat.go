package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// The snat family: a client pod talks to a server on a host outside the
// node, behind its uplink, and leaves masqueraded with the node's address.
// podpath masquerades at the uplink's tc egress (to_netdev); the iptables
// contender is Docker's default: the bridge, an uplink, ip_forward=1 and
// Docker's `-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`. Both outside
// hosts have the same addresses and no route back to the pods, so an
// unmasqueraded connection cannot even be set up; every measurement also
// checks that the server saw the node's address.

var (
	snatNodeAddr    = netip.MustParsePrefix("10.253.0.1/24")
	snatOutsideAddr = netip.MustParsePrefix("10.253.0.2/24")
)

// snatPodpathTopology: a sim node with an uplink to an outside host and
// one pod.
func (e *env) snatPodpathTopology(ctx context.Context) (_ *topology, err error) {
	bin, err := e.podpathCNI()
	if err != nil {
		return nil, err
	}
	node, closeNode, err := newSimNode("snat", netip.MustParsePrefix("10.246.0.0/16"),
		sim.WithCNIBin(bin), sim.WithMTU(mtu), sim.WithUplink(snatNodeAddr, snatOutsideAddr))
	if err != nil {
		return nil, err
	}
	closers := []func() error{closeNode}
	t := &topology{contender: cPodpath, close: closeAllFn(closers...), info: topologyInfo{
		Description: "podpath: sim node with an uplink (veth to an outside host netns, ip_forward=1, from_netdev and xdp_netdev on it), " +
			"one pod by podpath-cni; the pod's traffic to the outside host leaves the node through to_netdev (tc egress), which masquerades it",
	}}
	defer func() {
		if err != nil {
			closeAll(closers)
		}
	}()
	p, err := node.AddPod(ctx, "client")
	if err != nil {
		return nil, err
	}
	t.client = endpoint{Name: "podpath-snat-client", NS: p.NS, IP: p.IP}
	t.server = endpoint{Name: "podpath-outside", NS: node.Outside.NS, IP: node.Outside.IP}
	t.dst, t.wantPeer, t.connectFailuresOK = t.server.IP, node.Outside.NodeIP, true
	t.devices = []nsDevice{{"client eth0", p.NS, sim.IfName}, {"node uplink", node.NS, sim.UplinkName}, {"outside eth0", node.Outside.NS, "eth0"}}
	for _, iface := range p.Result.Interfaces {
		if iface.Sandbox == "" {
			t.devices = append(t.devices, nsDevice{"node client veth", node.NS, iface.Name})
		}
	}
	counters, err := maps.OpenPinned(node.PinRoot, maps.MapCounters)
	if err != nil {
		return nil, err
	}
	closers = append(closers, counters.Close)
	natStats, err := maps.OpenPinned(node.PinRoot, maps.MapNatStats)
	if err != nil {
		return nil, err
	}
	closers = append(closers, natStats.Close)
	snatMap, err := maps.OpenPinned(node.PinRoot, maps.MapSNAT)
	if err != nil {
		return nil, err
	}
	closers = append(closers, snatMap.Close)
	natConfig, err := maps.OpenPinned(node.PinRoot, maps.MapNatConfig)
	if err != nil {
		return nil, err
	}
	closers = append(closers, natConfig.Close)
	t.close = closeAllFn(closers...)
	t.state = func() map[string]uint64 {
		out := snatOccupancy(snatMap)
		var nc maps.NatConfig
		if out != nil && natConfig.Lookup(uint32(0), &nc) == nil {
			out["port_min"], out["port_max"] = uint64(nc.PortMin), uint64(nc.PortMax)
		}
		return out
	}
	// A node runs the agent, whose reaper deletes expired mappings every
	// 30 s; each measurement here is shorter than that, and each uses a
	// new server port, so a new destination whose mappings no later flow
	// takes over. Without this, a full run's closed flows (about 20,000
	// entries per TCP_CRR measurement) fill the map by the sixth.
	t.reap = func() (int, error) { return maps.ReapExpiredNAT(snatMap) }
	t.path = &pathCounter{name: "to_netdev_snat_pkts", required: true,
		read: func() (uint64, error) { return podpathCounter(counters, maps.HookToNetdev, maps.ReasonSNAT) }}
	t.extra = func() map[string]uint64 {
		out := map[string]uint64{}
		if st, err := maps.ReadNATStats(natStats); err == nil {
			for k, v := range st {
				out["nat_"+k] = v
			}
		}
		if cs, err := maps.ReadCounters(counters); err == nil {
			for _, c := range cs {
				if c.Reason.IsDrop() {
					out[c.Hook.String()+"/"+c.Reason.String()] += c.Packets
				}
			}
		}
		return out
	}
	return t, nil
}

// tcpFlagRST is the RST bit of the TCP flags a mapping has seen.
const tcpFlagRST = 0x04

// snatOccupancy counts the snat map's halves, forward and reverse, live and
// expired, and of the live ones those whose connection was reset (their
// port is free for a new flow at once), with the map's capacity: a mapping
// holds its node port while its reverse half lives and was not reset.
func snatOccupancy(m *ebpf.Map) map[string]uint64 {
	ms, err := maps.ReadNAT(m)
	if err != nil {
		return nil
	}
	out := map[string]uint64{"max_entries": uint64(m.MaxEntries())}
	for _, half := range []string{"forward_", "reverse_"} {
		for _, st := range []string{"live", "reset", "expired"} {
			out[half+st] = 0
		}
	}
	for _, x := range ms {
		k := "forward_"
		if x.Reverse {
			k = "reverse_"
		}
		switch {
		case x.ExpiresIn < 0:
			out[k+"expired"]++
		case x.Proto == unix.IPPROTO_TCP && x.TCPFlags&tcpFlagRST != 0:
			out[k+"reset"]++
			out[k+"live"]++
		default:
			out[k+"live"]++
		}
	}
	return out
}

// snatMasqueradeTopology: Docker's bridge with one pod, an uplink veth to
// an outside host, and Docker's rules (its MASQUERADE among them).
func (e *env) snatMasqueradeTopology(ctx context.Context) (_ *topology, err error) {
	var closers []func() error
	t := &topology{contender: cIptables, info: topologyInfo{
		Description: "Docker's default bridge (docker0, br_netfilter, ip_forward=1) with one pod, an uplink veth to an outside host netns, " +
			"and Docker's rules loaded with iptables-restore, among them `-t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`",
	}}
	t.close = func() error { return closeAll(closers) }
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	br, err := newBridgeNode(e, "masq", []string{"client"}, &closers)
	if err != nil {
		return nil, err
	}
	out, rm, err := newNS("masq", "outside")
	if err != nil {
		return nil, err
	}
	closers = append(closers, rm)
	if err := addVeth(br.node, "uplink0", out, "eth0", mtu); err != nil {
		return nil, err
	}
	if err := configureIf(br.node, "uplink0", snatNodeAddr); err != nil {
		return nil, err
	}
	if err := configureIf(out, "eth0", snatOutsideAddr); err != nil {
		return nil, err
	}
	if _, err := runIn(ctx, br.node, dockerRules, "iptables-restore"); err != nil {
		return nil, fmt.Errorf("load Docker's rules: %w", err)
	}
	t.client = br.pods[0]
	t.server = endpoint{Name: "masq-outside", NS: out, IP: snatOutsideAddr.Addr()}
	t.dst, t.wantPeer, t.connectFailuresOK = t.server.IP, snatNodeAddr.Addr(), true
	t.devices = append(br.devices, nsDevice{"node uplink", br.node, "uplink0"}, nsDevice{"outside eth0", out, "eth0"})
	t.info.Notes = append(t.info.Notes, "br_netfilter: "+br.brnf.status)
	node := br.node
	t.path = &pathCounter{name: "masquerade_rule_pkts", required: true,
		read: func() (uint64, error) { return tableRuleCounter(ctx, node, "nat", "-j MASQUERADE") }}
	return t, nil
}

// tableRuleCounter is the packet count of the first rule of a table
// containing match, from iptables-save -c.
func tableRuleCounter(ctx context.Context, n ns.NetNS, table, match string) (uint64, error) {
	out, err := runIn(ctx, n, "", "iptables-save", "-c", "-t", table)
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
	return 0, fmt.Errorf("no %s rule matching %q", table, match)
}

// runSNAT measures pod-to-outside throughput, TCP_RR and TCP_CRR through
// podpath's and iptables' masquerade, interleaved.
func (e *env) runSNAT(ctx context.Context) error {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return fmt.Errorf("iperf3 not found (apt-get install iperf3): %w", err)
	}
	var topos []*topology
	defer func() {
		for _, t := range topos {
			if err := t.close(); err != nil {
				slog.Warn("close", "contender", t.contender, "err", err)
			}
		}
	}()
	pin, err := pinnedCPUs()
	if err != nil {
		return err
	}
	for _, build := range []func(context.Context) (*topology, error){e.snatPodpathTopology, e.snatMasqueradeTopology} {
		t, err := build(ctx)
		if err != nil {
			return err
		}
		t.cpus = pin
		topos = append(topos, t)
		e.recordTopology(ctx, famSNAT+" "+t.contender, t)
	}
	for _, n := range fairness(topos) {
		e.res.Notes = append(e.res.Notes, "snat topologies differ: "+n)
	}
	for rep := range e.cfg.SNATReps {
		for _, t := range rotate(topos, rep) {
			if t.reap != nil {
				if _, err := t.reap(); err != nil {
					return fmt.Errorf("reap %s: %w", t.contender, err)
				}
			}
			if err := e.measureSNAT(ctx, t, rep); err != nil {
				return err
			}
		}
	}
	e.noteSNATDrops()
	return nil
}

// recordTopology writes a topology's addresses and devices to the results
// under key.
func (e *env) recordTopology(ctx context.Context, key string, t *topology) {
	t.info.Client, t.info.Server, t.info.Dst = t.client.IP.String(), t.server.IP.String(), t.dst.String()
	t.info.Devices = deviceInfos(ctx, t.devices)
	if e.res.Topologies == nil {
		e.res.Topologies = map[string]topologyInfo{}
	}
	e.res.Topologies[key] = t.info
}

// noteSNATDrops sums, over the run, the new flows podpath's masquerade
// dropped and the connections that failed, with the snat map's occupancy
// after the last measurement.
func (e *env) noteSNATDrops() {
	drops := map[string]uint64{}
	failed := 0
	var last any
	for _, m := range e.res.family(famSNAT) {
		if m.Contender != cPodpath {
			continue
		}
		for _, x := range m.Extra["datapath_counters_rose"] {
			if d, ok := x.(map[string]uint64); ok {
				for k, v := range d {
					if strings.Contains(k, "drop") || strings.HasSuffix(k, "no_port") || strings.HasSuffix(k, "map_full") {
						drops[k] += v
					}
				}
			}
		}
		for _, x := range m.Extra["failed_connections"] {
			if n, ok := x.(int); ok {
				failed += n
			}
		}
		if s := m.Extra["snat_map_after"]; len(s) > 0 && m.Metric == "crr_rate" {
			last = s[len(s)-1]
		}
	}
	if len(drops) == 0 && failed == 0 {
		return
	}
	e.res.Notes = append(e.res.Notes, fmt.Sprintf("snat: podpath dropped new flows over the run %v; %d TCP_CRR connections could not be set up; snat map after the last TCP_CRR: %v",
		drops, failed, last))
}

// measureSNAT runs iperf3, TCP_RR and TCP_CRR from the pod to the outside
// host once each.
func (e *env) measureSNAT(ctx context.Context, t *topology, rep int) error {
	line := []any{"rep", rep + 1, "contender", t.contender}
	st, before, err := e.measureThroughput(ctx, famSNAT, t, t.extras())
	if err != nil {
		return err
	}
	line = append(line, "Gbit/s", fmt.Sprintf("%.2f", st.bitsPerSecond/1e9))
	for _, crr := range []bool{false, true} {
		var r rrResult
		r, before, err = e.measureRequestResponse(ctx, famSNAT, t, crr, rep, before)
		if err != nil {
			return err
		}
		kind := rrKind(crr)
		if t.state != nil {
			e.res.find(famSNAT, kind+"_rate", t.contender).addExtra("snat_map_after", t.state())
		}
		line = append(line, kind, fmt.Sprintf("%.0f", r.rate), kind+"_p99_us", fmt.Sprintf("%.0f", r.p99))
	}
	slog.Info("snat", line...)
	return nil
}
