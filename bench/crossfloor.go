package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/vishvananda/netlink"
)

// The veth-floor contender: podpath-direct's topology (two sim nodes, one
// pod each behind a veth, the same devices and addresses), with podpath's
// programs shadowed by three programs of a few instructions each, attached
// at the head of the tcx chains so that podpath's never run:
//
//   - on the pod's host-side veth (ingress): an IPv4 frame gets the other
//     node's uplink MAC as destination, its own uplink's as source, and is
//     redirected out of the uplink (bpf_redirect);
//   - on the uplink (ingress): an IPv4 packet for the node's pod gets the
//     pod's MAC and the veth's, and goes into the pod (bpf_redirect_peer);
//   - on the uplink (egress): passes.
//
// No lookup, no check, no TTL: the least a datapath that moves pods'
// packets with BPF between veths and an uplink can do. Its distance to the
// limit is what the veth pair and the redirects cost on this machine; the
// distance from podpath-direct to it is what podpath's own decisions
// (lookups, policy, conntrack, counters, the FIB) cost.

// cVethFloor is the contender's name.
const cVethFloor = "veth-floor"

// sk_buff field offsets in struct __sk_buff (include/uapi/linux/bpf.h).
const (
	skbData    = 76
	skbDataEnd = 80
)

// floorProgram assembles one of the floor's programs. forIP, when valid, is
// the only destination address redirected (the uplink's ingress program);
// dst and src are the MACs written; redirect is the helper, ifindex its
// target.
func floorProgram(name string, forIP netip.Addr, dst, src net.HardwareAddr, redirect asm.BuiltinFunc, ifindex int) (*ebpf.Program, error) {
	need := int32(ethHdrLen)
	if forIP.IsValid() {
		need = ethHdrLen + 20
	}
	le32 := func(b []byte) int64 { return int64(binary.LittleEndian.Uint32(b)) }
	le16 := func(b []byte) int64 { return int64(binary.LittleEndian.Uint16(b)) }
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, need),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R4, 0x0008, "pass"), // ETH_P_IP, network order, read little-endian
	}
	if forIP.IsValid() {
		a := forIP.As4()
		insns = append(insns,
			asm.LoadMem(asm.R4, asm.R2, ethHdrLen+16, asm.Word),
			asm.JNE.Imm(asm.R4, int32(binary.LittleEndian.Uint32(a[:])), "pass"))
	}
	insns = append(insns,
		asm.StoreImm(asm.R2, 0, le32(dst[0:4]), asm.Word),
		asm.StoreImm(asm.R2, 4, le16(dst[4:6]), asm.Half),
		asm.StoreImm(asm.R2, 6, le32(src[0:4]), asm.Word),
		asm.StoreImm(asm.R2, 10, le16(src[4:6]), asm.Half),
		asm.Mov.Imm(asm.R1, int32(ifindex)),
		asm.Mov.Imm(asm.R2, 0),
		redirect.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("pass"), // TC_ACT_OK
		asm.Return(),
	)
	return ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.SchedCLS, License: "GPL", Instructions: insns})
}

// ethHdrLen is an Ethernet header's length.
const ethHdrLen = 14

// floorCrossTopology builds podpath-direct's topology under another name
// and shadows podpath's programs with the floor's.
func (e *env) floorCrossTopology(ctx context.Context) (*topology, error) {
	t, err := e.podpathCrossTopologyNamed(ctx, cVethFloor, loader.RoutingDirect)
	if err != nil {
		return nil, err
	}
	t.info.Description = "the floor of a BPF datapath on veth: podpath-direct's topology (two sim nodes, one pod each, pod MTU 1500), " +
		"podpath's programs shadowed at the head of the tcx chains by three of a few instructions each: the pod's veth (ingress) " +
		"rewrites the MACs and bpf_redirects out of the uplink, the uplink (ingress) rewrites them and bpf_redirect_peers into the pod, " +
		"the uplink (egress) passes; no lookup, no check, no TTL"
	if err := e.shadowWithFloor(t); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// shadowWithFloor attaches the floor's programs on both nodes of t.
func (e *env) shadowWithFloor(t *topology) error {
	dev := map[string]nsDevice{}
	for _, d := range t.devices {
		dev[d.label] = d
	}
	mac := func(n ns.NetNS, name string) (l netlink.Link, err error) {
		err = n.Do(func(ns.NetNS) error {
			l, err = netlink.LinkByName(name)
			return err
		})
		return l, err
	}
	var closeLinks []func() error
	closeTopology := t.close
	// closeAll goes backwards: the links first, then the nodes.
	t.close = func() error { return closeAll(append([]func() error{closeTopology}, closeLinks...)) }
	var uplinks [2]netlink.Link
	for i := range uplinks {
		up := dev[fmt.Sprintf("node%d uplink", i+1)]
		l, err := mac(up.ns, up.name)
		if err != nil {
			return fmt.Errorf("%s: node %d's uplink: %w", cVethFloor, i+1, err)
		}
		uplinks[i] = l
	}
	for i, pod := range []endpoint{t.client, t.server} {
		veth := dev[fmt.Sprintf("node%d pod veth", i+1)]
		vl, err := mac(veth.ns, veth.name)
		if err != nil {
			return err
		}
		pl, err := mac(pod.NS, sim.IfName)
		if err != nil {
			return err
		}
		up, other := uplinks[i], uplinks[1-i]
		progs := []struct {
			prog   func() (*ebpf.Program, error)
			ifi    int
			attach ebpf.AttachType
		}{
			{func() (*ebpf.Program, error) {
				return floorProgram("floor_from_pod", netip.Addr{}, other.Attrs().HardwareAddr, up.Attrs().HardwareAddr, asm.FnRedirect, up.Attrs().Index)
			}, vl.Attrs().Index, ebpf.AttachTCXIngress},
			{func() (*ebpf.Program, error) {
				return floorProgram("floor_from_net", pod.IP, pl.Attrs().HardwareAddr, vl.Attrs().HardwareAddr, asm.FnRedirectPeer, vl.Attrs().Index)
			}, up.Attrs().Index, ebpf.AttachTCXIngress},
			{func() (*ebpf.Program, error) {
				return ebpf.NewProgram(&ebpf.ProgramSpec{Name: "floor_pass", Type: ebpf.SchedCLS, License: "GPL",
					Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
			}, up.Attrs().Index, ebpf.AttachTCXEgress},
		}
		for _, p := range progs {
			prog, err := p.prog()
			if err != nil {
				return fmt.Errorf("%s: load: %w", cVethFloor, err)
			}
			var l link.Link
			err = veth.ns.Do(func(ns.NetNS) (err error) {
				l, err = link.AttachTCX(link.TCXOptions{Program: prog, Attach: p.attach, Interface: p.ifi, Anchor: link.Head()})
				return err
			})
			prog.Close() // the link holds it
			if err != nil {
				return fmt.Errorf("%s: attach: %w", cVethFloor, err)
			}
			closeLinks = append(closeLinks, l.Close)
		}
	}
	// The path: what the pods' uplinks sent (nothing else runs there).
	for i, pc := range []**pathCounter{&t.path, &t.replyPath} {
		up, side := dev[fmt.Sprintf("node%d uplink", i+1)], []string{"client", "server"}[i]
		*pc = &pathCounter{name: side + "_node_uplink_tx_pkts", required: true,
			read: func() (uint64, error) { return linkTxPackets(up.ns, up.name) }}
	}
	t.extra = nil
	return nil
}
