// Package trace answers "what would this node's datapath do with this
// packet?" without sending one: it builds the packet, runs it with
// BPF_PROG_RUN through the node's programs built for the dry run
// (loader.DryRun: the same C, every write to a shared map compiled out),
// hook after hook in the order the packet would meet them, and reports
// each hook's lookups, rewrites and verdict. Between hooks it asks the
// kernel what the node's stack would do (route lookups), as the packet
// would be routed. No map, counter or conntrack entry of the node changes.
package trace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/internal/packet"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Request is the packet to trace.
type Request struct {
	// From is where the packet starts: a pod of this node (its address or
	// its host-side device), this node (one of its addresses: its own
	// traffic, routed by its stack), or any other IPv4 address, which
	// arrives from the network (another node's pod through the overlay
	// or the uplink, anything else through the uplink that routes to it).
	From string
	// To is the destination; its port is ignored for ICMP.
	To netip.AddrPort
	// Proto is tcp, udp or icmp (an echo request).
	Proto string
	// SrcPort is the source port (the echo identifier for ICMP); 0 means
	// DefaultSrcPort.
	SrcPort uint16
	// TCPFlags of a TCP packet; 0 means SYN, a connection's first packet.
	TCPFlags uint8
	// Size is the payload's length in bytes.
	Size int
}

// DefaultSrcPort is the source port of a trace that names none.
const DefaultSrcPort = 40000

// Tuple is what a hook saw of the packet, or made of it.
type Tuple struct {
	Src   netip.AddrPort `json:"src"`
	Dst   netip.AddrPort `json:"dst"`
	Proto string         `json:"proto"`
	TTL   uint8          `json:"ttl"`
}

func (t Tuple) String() string {
	if t.Proto == "icmp" {
		return fmt.Sprintf("%s -> %s icmp id %d", t.Src.Addr(), t.Dst.Addr(), t.Src.Port())
	}
	return fmt.Sprintf("%s -> %s %s", t.Src, t.Dst, t.Proto)
}

// Hop is one program's run.
type Hop struct {
	Hook    string   `json:"hook"`
	Device  string   `json:"device"`
	Ifindex int      `json:"ifindex"`
	In      Tuple    `json:"in"`
	Out     Tuple    `json:"out"`
	Lookups []string `json:"lookups,omitempty"`
	// Reason is the reason the hook counts the packet under (the last
	// counted, when it counts more than one).
	Reason string `json:"reason"`
	// Action is what the program returned: pass, drop, redirect, tx.
	Action string `json:"action"`
	// Next is where the packet goes from here.
	Next string `json:"next"`
}

// Result is a whole trace.
type Result struct {
	Hops []Hop `json:"hops"`
	// Outcome is where the packet ends: delivered (into a pod or to the
	// node), sent (out of a device, towards another host or node),
	// dropped, or stopped (where this node's programs no longer see it).
	Outcome string `json:"outcome"`
	// Where says where, in words.
	Where string `json:"where"`
	// Final is the packet as it ends; the one inside, when it leaves
	// encapsulated by a program (Outer is then the VXLAN packet's).
	Final Tuple `json:"final"`
	// Outer is the VXLAN packet carrying Final, when a program
	// encapsulated it.
	Outer *Tuple `json:"outer,omitempty"`
	// Notes are what a reader should know about this trace.
	Notes []string `json:"notes,omitempty"`
}

// Tracer runs traces on one node. It must be used in the node's network
// namespace (route lookups and BPF_PROG_RUN see that namespace's devices).
type Tracer struct {
	cfg   loader.Config
	dry   *loader.DryRun
	eps   []maps.Endpoint
	peers map[maps.PeerKey]maps.Peer
	links map[int]netlink.Link
	// uplinks and overlay: the devices with podpath's netdev programs.
	uplinks map[int]bool
	overlay int
	names   maps.Names
}

// Open loads the dry-run programs of the node recorded in stateDir.
func Open(stateDir string) (*Tracer, error) {
	cfg, err := loader.ReadNodeConfig(stateDir)
	if err != nil {
		return nil, err
	}
	if err := progrun.IngressIfindex(); err != nil {
		return nil, fmt.Errorf("podpath trace needs BPF_PROG_RUN to take the incoming device (Linux 5.16 or later): %w", err)
	}
	if err := progrun.CheckLayout(); err != nil {
		return nil, err
	}
	dry, err := loader.LoadDryRun(cfg)
	if err != nil {
		return nil, err
	}
	t := &Tracer{cfg: cfg, dry: dry, links: map[int]netlink.Link{}, uplinks: map[int]bool{}, names: maps.ReasonNames()}
	if err := t.refresh(); err != nil {
		dry.Close()
		return nil, err
	}
	return t, nil
}

// Close releases the dry-run programs.
func (t *Tracer) Close() error { return t.dry.Close() }

// refresh reads what the node knows now: its pods, peers and devices.
func (t *Tracer) refresh() error {
	eps, err := maps.ListEndpoints(t.cfg.PinRoot)
	if err != nil {
		return err
	}
	t.eps = eps
	pm, err := maps.OpenPinned(t.cfg.PinRoot, maps.MapPeers)
	if err != nil {
		return err
	}
	defer pm.Close()
	if t.peers, err = maps.Entries[maps.PeerKey, maps.Peer](pm); err != nil {
		return fmt.Errorf("read peers: %w", err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list devices: %w", err)
	}
	for _, l := range links {
		t.links[l.Attrs().Index] = l
		switch {
		case slices.Contains(t.cfg.Uplinks, l.Attrs().Name):
			t.uplinks[l.Attrs().Index] = true
		case l.Attrs().Name == loader.OverlayDevice && t.cfg.Routing == loader.RoutingVXLAN:
			t.overlay = l.Attrs().Index
		}
	}
	return nil
}

func (t *Tracer) devName(ifindex int) string {
	if l, ok := t.links[ifindex]; ok {
		return l.Attrs().Name
	}
	return fmt.Sprintf("ifindex %d", ifindex)
}

func (t *Tracer) endpointByAddr(a netip.Addr) (maps.Endpoint, bool) {
	for _, ep := range t.eps {
		if ep.IP == a {
			return ep, true
		}
	}
	return maps.Endpoint{}, false
}

func (t *Tracer) endpointByIfindex(ifindex int) (maps.Endpoint, bool) {
	for _, ep := range t.eps {
		if int(ep.Info.Ifindex) == ifindex {
			return ep, true
		}
	}
	return maps.Endpoint{}, false
}

// peerOf is the longest peers prefix holding a, as the datapath's LPM
// lookup finds it.
func (t *Tracer) peerOf(a netip.Addr) (netip.Prefix, maps.Peer, bool) {
	var best netip.Prefix
	var bestPeer maps.Peer
	found := false
	for k, p := range t.peers {
		pfx := k.Prefix()
		if pfx.Contains(a) && (!found || pfx.Bits() > best.Bits()) {
			best, bestPeer, found = pfx, p, true
		}
	}
	return best, bestPeer, found
}

func (t *Tracer) localAddr(a netip.Addr) bool {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP.To4()); ok && ip == a {
			return true
		}
	}
	return false
}

// stage is where the packet is next: a program to run, or the stack.
type stage struct {
	hook    string // a maps.Prog* name, or "" for the stack's routing
	ifindex int    // the device the hook runs on
	iif     int    // the device the packet came in on (skb_iif)
	tunnel  [2]uint32
	local   bool // the stack: sent by the node itself
}

// maxHops bounds a trace: no packet of podpath's crosses more hooks.
const maxHops = 8

// Trace runs req through the node's programs.
func (t *Tracer) Trace(req Request) (*Result, error) {
	if err := t.refresh(); err != nil {
		return nil, err
	}
	if err := t.forget(); err != nil {
		return nil, err
	}
	frame, first, res, err := t.start(req)
	if err != nil {
		return nil, err
	}
	next := first
	for range maxHops {
		if next.hook == "" {
			next, err = t.route(res, frame, next)
			if err != nil || next.hook == "" {
				break
			}
			continue
		}
		frame, next, err = t.run(res, frame, next)
		if err != nil || next.hook == "" && res.Outcome != "" {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if res.Outcome == "" {
		res.Outcome, res.Where = "stopped", fmt.Sprintf("after %d hooks: a loop?", maxHops)
	}
	res.Final, _ = parseTuple(frame)
	if inner := t.overlayInner(frame); inner != nil {
		outer := res.Final
		res.Outer = &outer
		res.Final, _ = parseTuple(inner)
	}
	return res, nil
}

// overlayInner is the frame inside frame when frame is a VXLAN packet of
// this node's overlay (IPv4 without options, UDP to the overlay's port,
// the VNI flag set), nil otherwise.
func (t *Tracer) overlayInner(frame []byte) []byte {
	const outer = packet.EthHeaderLen + packet.IPv4HeaderLen + 8 + 8
	if t.overlay == 0 || len(frame) < outer+packet.EthHeaderLen ||
		binary.BigEndian.Uint16(frame[12:]) != packet.EthPIPv4 {
		return nil
	}
	ip := frame[packet.EthHeaderLen:]
	udp := ip[packet.IPv4HeaderLen:]
	if ip[0] != 0x45 || ip[9] != packet.ProtoUDP || binary.BigEndian.Uint16(udp[2:]) != t.cfg.VXLANPort ||
		udp[8] != 0x08 {
		return nil
	}
	return frame[outer:]
}

// forget empties the conntrack entries of the previous trace.
func (t *Tracer) forget() error {
	var k maps.CtKey
	var keys []maps.CtKey
	var v maps.CtEntry
	it := t.dry.CT.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read the trace's conntrack: %w", err)
	}
	for _, k := range keys {
		if err := t.dry.CT.Delete(k); err != nil {
			return fmt.Errorf("empty the trace's conntrack: %w", err)
		}
	}
	return nil
}

// start builds the packet and finds where it enters the datapath.
func (t *Tracer) start(req Request) ([]byte, stage, *Result, error) {
	res := &Result{}
	if !req.To.Addr().Is4() {
		return nil, stage{}, nil, fmt.Errorf("destination %s: only IPv4 is traced", req.To.Addr())
	}
	if req.SrcPort == 0 {
		req.SrcPort = DefaultSrcPort
	}
	var (
		src    netip.Addr
		st     stage
		ethDst net.HardwareAddr
		ethSrc net.HardwareAddr
	)
	if ep, ok := t.fromEndpoint(req.From); ok {
		src = ep.IP
		st = stage{hook: maps.ProgFromPod, ifindex: int(ep.Info.Ifindex), iif: int(ep.Info.Ifindex)}
		ethDst, ethSrc = ep.Info.GatewayMAC(), ep.Info.PodMAC()
	} else {
		a, err := netip.ParseAddr(req.From)
		if err != nil || !a.Is4() {
			return nil, stage{}, nil, fmt.Errorf("--from %q: neither a pod of this node (address or host-side device) nor an IPv4 address", req.From)
		}
		src = a
		switch {
		case t.localAddr(a):
			st = stage{local: true}
			res.Notes = append(res.Notes, "sent by the node itself: its connections to a service are balanced at connect() by the socket program, which a trace does not run")
		default:
			var err error
			st, ethDst, ethSrc, err = t.arrival(a)
			if err != nil {
				return nil, stage{}, nil, err
			}
		}
	}
	l4, proto, err := transport(req, src)
	if err != nil {
		return nil, stage{}, nil, err
	}
	ip := packet.IPv4(packet.IPv4Header{ID: 1, TTL: 64, Protocol: proto, Src: src, Dst: req.To.Addr()}, l4)
	if ethDst == nil {
		ethDst = make(net.HardwareAddr, 6)
		ethSrc = make(net.HardwareAddr, 6)
	}
	return packet.Ether(ethDst, ethSrc, packet.EthPIPv4, ip), st, res, nil
}

func (t *Tracer) fromEndpoint(from string) (maps.Endpoint, bool) {
	if a, err := netip.ParseAddr(from); err == nil {
		return t.endpointByAddr(a)
	}
	for idx, l := range t.links {
		if l.Attrs().Name == from {
			return t.endpointByIfindex(idx)
		}
	}
	return maps.Endpoint{}, false
}

// arrival is where a packet from src, not of this node, comes in: another
// node's pod through the overlay (or, routed directly, the uplink), and
// anything else through the device the node routes src through.
func (t *Tracer) arrival(src netip.Addr) (stage, net.HardwareAddr, net.HardwareAddr, error) {
	via := src
	if _, p, ok := t.peerOf(src); ok {
		node := maps.AddrFrom16(maps.FamilyIPv4, p.NodeAddr)
		if p.Flags&maps.PeerFlagTunnel != 0 && t.overlay != 0 {
			var remote uint32
			b := node.As4()
			remote = binary.NativeEndian.Uint32(b[:])
			l := t.links[t.overlay]
			return stage{hook: maps.ProgFromOverlay, ifindex: t.overlay, iif: t.overlay, tunnel: [2]uint32{remote, p.Vni}},
				l.Attrs().HardwareAddr, overlaySrcMAC, nil
		}
		via = node
	}
	routes, err := netlink.RouteGet(net.IP(via.AsSlice()))
	if err != nil || len(routes) == 0 {
		return stage{}, nil, nil, fmt.Errorf("no route towards %s: cannot tell which device it would arrive on", via)
	}
	idx := routes[0].LinkIndex
	l, ok := t.links[idx]
	if !ok || !t.uplinks[idx] {
		return stage{}, nil, nil, fmt.Errorf("%s would arrive on %s, which is not one of the node's uplinks (%s)", src, t.devName(idx), strings.Join(t.cfg.Uplinks, ", "))
	}
	hook := maps.ProgFromNetdev
	if xdp := l.Attrs().Xdp; xdp != nil && xdp.Attached {
		hook = maps.ProgXDPNetdev
	}
	return stage{hook: hook, ifindex: idx, iif: idx}, l.Attrs().HardwareAddr, outsideMAC, nil
}

// The source MACs of packets from elsewhere: another node's overlay frame
// (as lib/peer.h writes it), and a host on the uplink's segment.
var (
	overlaySrcMAC = net.HardwareAddr{0x0e, 0x71, 0, 0, 0, 0}
	outsideMAC    = net.HardwareAddr{0x02, 0x00, 0x5e, 0x00, 0x00, 0x01}
)

func transport(req Request, src netip.Addr) ([]byte, uint8, error) {
	payload := make([]byte, req.Size)
	dst := req.To.Addr()
	switch req.Proto {
	case "tcp", "":
		flags := req.TCPFlags
		if flags == 0 {
			flags = 0x02
		}
		return packet.TCPSegment(src, dst, req.SrcPort, req.To.Port(), flags, payload), packet.ProtoTCP, nil
	case "udp":
		return packet.UDP(src, dst, req.SrcPort, req.To.Port(), payload), packet.ProtoUDP, nil
	case "icmp":
		return packet.ICMP(8, 0, uint32(req.SrcPort)<<16|1, payload), packet.ProtoICMP, nil
	}
	return nil, 0, fmt.Errorf("protocol %q: tcp, udp or icmp", req.Proto)
}

// Return codes (linux/pkt_cls.h, linux/bpf.h).
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7

	xdpDrop = 1
	xdpPass = 2
	xdpTx   = 3
)

// run runs one hook and decides what follows.
func (t *Tracer) run(res *Result, frame []byte, st stage) ([]byte, stage, error) {
	prog := t.dry.Programs[st.hook]
	if prog == nil {
		return nil, stage{}, fmt.Errorf("no dry-run program %s", st.hook)
	}
	log := maps.TraceLog{TunnelRemote: st.tunnel[0], TunnelVNI: st.tunnel[1]}
	if err := t.dry.Log.Put(uint32(0), &log); err != nil {
		return nil, stage{}, fmt.Errorf("reset trace log: %w", err)
	}
	in, _ := parseTuple(frame)
	var (
		ret uint32
		out []byte
		err error
	)
	if st.hook == maps.ProgXDPNetdev {
		ret, out, err = progrun.RunXDP(prog, frame)
	} else {
		ret, out, err = progrun.RunTC(prog, progrun.SkbContext{IngressIfindex: uint32(st.iif), Ifindex: uint32(st.ifindex)}, frame)
	}
	if err != nil {
		return nil, stage{}, fmt.Errorf("run %s: %w", st.hook, err)
	}
	if err := t.dry.Log.Lookup(uint32(0), &log); err != nil {
		return nil, stage{}, fmt.Errorf("read trace log: %w", err)
	}
	outTuple, _ := parseTuple(out)
	hop := Hop{Hook: st.hook, Device: t.devName(st.ifindex), Ifindex: st.ifindex, In: in, Out: outTuple}
	var redirect *maps.TraceNote
	var tunnel [2]uint32
	for _, n := range log.Notes[:min(log.Count, maps.TraceNotes)] {
		switch n.Kind {
		case maps.TraceVerdict:
			hop.Reason = maps.Reason(n.A).String()
		case maps.TraceRedirect:
			n := n
			redirect = &n
		case maps.TraceTunnel:
			tunnel = [2]uint32{n.A, n.B}
		}
		if s := t.describe(n); s != "" {
			hop.Lookups = append(hop.Lookups, s)
		}
	}
	next := stage{}
	if st.hook == maps.ProgXDPNetdev {
		switch ret {
		case xdpPass:
			hop.Action = "pass"
			next = stage{hook: maps.ProgFromNetdev, ifindex: st.ifindex, iif: st.iif}
			hop.Next = "on to tc ingress of " + hop.Device
		case xdpDrop:
			hop.Action = "drop"
			res.Outcome, res.Where = "dropped", fmt.Sprintf("at %s on %s: %s", st.hook, hop.Device, hop.Reason)
		case xdpTx:
			hop.Action = "tx"
			res.Outcome, res.Where = "sent", "back out of "+hop.Device
		default:
			hop.Action = fmt.Sprintf("xdp action %d", ret)
			res.Outcome, res.Where = "stopped", hop.Action
		}
		hop.Next = firstNonEmpty(hop.Next, res.Where)
		res.Hops = append(res.Hops, hop)
		return out, next, nil
	}
	ingress := st.hook == maps.ProgFromPod || st.hook == maps.ProgFromNetdev || st.hook == maps.ProgFromOverlay
	switch ret {
	case tcActShot:
		hop.Action = "drop"
		res.Outcome, res.Where = "dropped", fmt.Sprintf("at %s on %s: %s", st.hook, hop.Device, hop.Reason)
	case tcActRedirect:
		hop.Action = "redirect"
		if redirect == nil {
			return nil, stage{}, fmt.Errorf("%s redirected without saying where", st.hook)
		}
		next = t.afterRedirect(res, *redirect, st, tunnel)
	case tcActOK:
		hop.Action = "pass"
		if ingress {
			next = stage{iif: st.iif}
			hop.Next = "to the node's stack, which routes it"
		} else {
			t.leaves(res, st, tunnel)
		}
	default:
		hop.Action = fmt.Sprintf("tc action %d", ret)
		res.Outcome, res.Where = "stopped", hop.Action
	}
	hop.Next = firstNonEmpty(hop.Next, nextWords(next, t), res.Where)
	res.Hops = append(res.Hops, hop)
	return out, next, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func nextWords(st stage, t *Tracer) string {
	if st.hook == "" {
		return ""
	}
	return fmt.Sprintf("on to %s on %s", st.hook, t.devName(st.ifindex))
}

// afterRedirect follows a redirect: into a pod, or out of a device whose
// egress program runs next.
func (t *Tracer) afterRedirect(res *Result, n maps.TraceNote, from stage, tunnel [2]uint32) stage {
	idx := int(n.A)
	if n.B == maps.TraceRedirectPeer {
		if ep, ok := t.endpointByIfindex(idx); ok {
			res.Outcome, res.Where = "delivered", fmt.Sprintf("into pod %s (the peer of %s), skipping the host's stack", ep.IP, t.devName(idx))
		} else {
			res.Outcome, res.Where = "delivered", fmt.Sprintf("into the namespace of %s's peer", t.devName(idx))
		}
		return stage{}
	}
	return t.egress(res, idx, from.iif, tunnel)
}

// egress is the stage of a packet leaving through ifindex.
func (t *Tracer) egress(res *Result, ifindex, iif int, tunnel [2]uint32) stage {
	switch {
	case t.uplinks[ifindex]:
		return stage{hook: maps.ProgToNetdev, ifindex: ifindex, iif: iif, tunnel: tunnel}
	case ifindex == t.overlay && ifindex != 0:
		return stage{hook: maps.ProgToOverlay, ifindex: ifindex, iif: iif, tunnel: tunnel}
	}
	if _, ok := t.endpointByIfindex(ifindex); ok {
		return stage{hook: maps.ProgToPod, ifindex: ifindex, iif: iif}
	}
	res.Outcome, res.Where = "sent", fmt.Sprintf("out of %s, which has no podpath program", t.devName(ifindex))
	return stage{}
}

// leaves ends a trace at an egress program that passed the packet.
func (t *Tracer) leaves(res *Result, st stage, tunnel [2]uint32) {
	dev := t.devName(st.ifindex)
	switch st.hook {
	case maps.ProgToPod:
		ep, _ := t.endpointByIfindex(st.ifindex)
		res.Outcome, res.Where = "delivered", fmt.Sprintf("into pod %s through %s", ep.IP, dev)
	case maps.ProgToOverlay:
		res.Outcome, res.Where = "sent", fmt.Sprintf("encapsulated by %s towards node %s (VNI %d)", dev, addrOf(tunnel[0]), tunnel[1])
	case maps.ProgToNetdev:
		res.Outcome, res.Where = "sent", "out of "+dev
		if st.tunnel[0] != 0 {
			res.Where = fmt.Sprintf("out of %s, encapsulated by %s towards node %s (VNI %d)", dev, maps.ProgFromPod, addrOf(st.tunnel[0]), st.tunnel[1])
		}
	default:
		res.Outcome, res.Where = "sent", "out of "+dev
	}
}

// route asks the kernel where the stack sends the packet: delivered to the
// node, or out of a device whose egress program runs next.
func (t *Tracer) route(res *Result, frame []byte, st stage) (stage, error) {
	tu, err := parseTuple(frame)
	if err != nil {
		return stage{}, err
	}
	opts := &netlink.RouteGetOptions{SrcAddr: net.IP(tu.Src.Addr().AsSlice())}
	if !st.local {
		opts.Iif = t.devName(st.iif)
	}
	routes, err := netlink.RouteGetWithOptions(net.IP(tu.Dst.Addr().AsSlice()), opts)
	if err != nil || len(routes) == 0 {
		res.Outcome, res.Where = "dropped", fmt.Sprintf("by the node's stack: no route to %s from %s (%v)", tu.Dst.Addr(), tu.Src.Addr(), err)
		return stage{}, nil
	}
	r := routes[0]
	if r.Type == unix.RTN_LOCAL {
		res.Outcome, res.Where = "delivered", "to the node itself (a local address)"
		return stage{}, nil
	}
	if !st.local && tu.TTL <= 1 {
		res.Outcome, res.Where = "dropped", "by the node's stack: TTL exceeded"
		return stage{}, nil
	}
	decTTL(frame, !st.local)
	return t.egress(res, r.LinkIndex, st.iif, [2]uint32{}), nil
}

// decTTL lowers the TTL of a forwarded packet as the stack does.
func decTTL(frame []byte, forwarded bool) {
	if !forwarded || len(frame) < packet.EthHeaderLen+packet.IPv4HeaderLen {
		return
	}
	ip := frame[packet.EthHeaderLen:]
	ip[8]--
	// RFC 1624: the checksum of a TTL decrement.
	sum := uint32(binary.BigEndian.Uint16(ip[10:])) + 0x0100
	binary.BigEndian.PutUint16(ip[10:], uint16(sum+sum>>16))
}

// describe says what a note found, in words; "" for verdicts and
// redirects, which the hop reports itself.
func (t *Tracer) describe(n maps.TraceNote) string {
	switch n.Kind {
	case maps.TraceService:
		return fmt.Sprintf("service %d: frontend found, %d backends, %s", n.A, n.B, algoName(n.C))
	case maps.TraceCTFlow:
		return fmt.Sprintf("conntrack: an existing flow of service %d, on backend %s", n.B, t.backend(n.A))
	case maps.TraceCTReply:
		return fmt.Sprintf("conntrack: a reply of service %d (backend %s), frontend %s restored as source", n.B, t.backend(n.A), addrOf(n.C))
	case maps.TraceLBNew:
		return fmt.Sprintf("load balancing: a new flow of service %d, backend %s chosen", n.B, t.backend(n.A))
	case maps.TraceSNATFlow:
		return fmt.Sprintf("SNAT: the flow's mapping, %s:%d", addrOf(n.A), maps.HostPort(uint16(n.B)))
	case maps.TraceSNATNew:
		return fmt.Sprintf("SNAT: a new flow; the attached program allocates a mapping at this point (this run picked %s:%d)", addrOf(n.A), maps.HostPort(uint16(n.B)))
	case maps.TraceSNATReply:
		return fmt.Sprintf("SNAT: a reply of a masqueraded flow, back to %s:%d", addrOf(n.A), maps.HostPort(uint16(n.B)))
	case maps.TracePeer:
		mode := "routed"
		if n.B&uint32(maps.PeerFlagTunnel) != 0 {
			mode = "encapsulated"
		}
		return fmt.Sprintf("peers: another node's (%s), %s", addrOf(n.A), mode)
	case maps.TraceTunnel:
		return fmt.Sprintf("tunnel key: to node %s, VNI %d", addrOf(n.A), n.B)
	case maps.TraceFrag:
		return fmt.Sprintf("fragments: a later fragment, as its first one went (decision %d)", int32(n.A))
	case maps.TraceFIB:
		return fmt.Sprintf("FIB: out of %s", t.devName(int(n.A)))
	case maps.TracePolicy:
		who := fmt.Sprintf("identity %d", n.A)
		if n.C != 0 {
			who += fmt.Sprintf(" (CIDR identity %d)", n.C)
		}
		if n.B == 0 {
			return "policy: a new connection with " + who + ", not allowed"
		}
		return "policy: a new connection with " + who + ", allowed"
	case maps.TraceRedirect:
		switch n.B {
		case maps.TraceRedirectPeer:
			return "redirect into the namespace behind " + t.devName(int(n.A))
		case maps.TraceRedirectNeigh:
			if n.C != 0 {
				return fmt.Sprintf("redirect out of %s towards next hop %s, its MAC from the neighbour table", t.devName(int(n.A)), addrOf(n.C))
			}
			return "redirect out of " + t.devName(int(n.A)) + ", route and MAC from the kernel's tables"
		}
		return "redirect out of " + t.devName(int(n.A))
	}
	return ""
}

func algoName(a uint32) string {
	switch a {
	case 0:
		return "random"
	case 1:
		return "round robin"
	case 2:
		return "maglev"
	}
	return fmt.Sprintf("algorithm %d", a)
}

// backend names a backend by its address.
func (t *Tracer) backend(id uint32) string {
	m, err := maps.OpenPinned(t.cfg.PinRoot, maps.MapBackends)
	if err != nil {
		return fmt.Sprintf("id %d", id)
	}
	defer m.Close()
	var b maps.Backend
	if err := m.Lookup(id, &b); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Sprintf("id %d (gone)", id)
		}
		return fmt.Sprintf("id %d", id)
	}
	return fmt.Sprintf("%s (id %d)", netip.AddrPortFrom(maps.AddrFrom16(b.Family, b.Addr), maps.HostPort(b.Port)), id)
}

// addrOf reads an IPv4 address kept in network order in a native u32.
func addrOf(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// parseTuple reads the addresses, protocol and ports of an Ethernet frame.
func parseTuple(frame []byte) (Tuple, error) {
	if len(frame) < packet.EthHeaderLen+packet.IPv4HeaderLen || binary.BigEndian.Uint16(frame[12:]) != packet.EthPIPv4 {
		return Tuple{}, errors.New("not an IPv4 frame")
	}
	ip := frame[packet.EthHeaderLen:]
	ihl := int(ip[0]&0xf) * 4
	src := netip.AddrFrom4([4]byte(ip[12:16]))
	dst := netip.AddrFrom4([4]byte(ip[16:20]))
	tu := Tuple{TTL: ip[8]}
	var sport, dport uint16
	l4 := ip[min(ihl, len(ip)):]
	switch ip[9] {
	case packet.ProtoTCP, packet.ProtoUDP:
		tu.Proto = map[byte]string{packet.ProtoTCP: "tcp", packet.ProtoUDP: "udp"}[ip[9]]
		if len(l4) >= 4 {
			sport, dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		}
	case packet.ProtoICMP:
		tu.Proto = "icmp"
		if len(l4) >= 6 {
			sport = binary.BigEndian.Uint16(l4[4:])
			if l4[0] == 3 {
				tu.Proto = "icmp (destination unreachable)"
			}
		}
	default:
		tu.Proto = fmt.Sprintf("proto %d", ip[9])
	}
	tu.Src, tu.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return tu, nil
}
