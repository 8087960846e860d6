package datapath_test

// Services as from_pod sees them: a frontend 10.96.0.10:80 over TCP and UDP,
// backends in pods A, B and C and on another node, the maps seeded directly
// as user space would write them. Packets are described as flows; a test
// states the flow it sends and the flow that must come out, and both frames
// are built here from scratch, every length and checksum computed afresh, so
// an expected frame never borrows a byte from the program's output.

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/internal/csum"
	"github.com/podpath/podpath/internal/packet"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// podC is a third pod on this node: a second local backend.
var podC = pod{
	IP:      netip.MustParseAddr("10.244.1.30"),
	Ifindex: 30,
	MAC:     mustMAC("02:00:0a:f4:01:1e"),
	NodeMAC: mustMAC("ee:ee:00:00:00:1e"),
	Cookie:  0x3000,
}

var (
	vip = netip4("10.96.0.10") // the ClusterIP

	nodeIP     = netip4("192.168.1.5") // listed in node_addrs
	strangerIP = netip4("192.168.1.6") // a host address this node does not have
)

const (
	vipPort     = 80
	backendPort = 8080

	tcpSvcID = 1
	udpSvcID = 2

	// Backend ids: the datapath knows backends only by these.
	backendA      = 10 // pod A itself: hairpin
	backendB      = 11
	backendC      = 12
	backendRemote = 13 // a pod on another node

	// A Maglev table size small enough to seed whole; the loader's
	// default is 16381.
	testMaglevSize = 251
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// Conntrack lifetimes after the last packet (bpf/lib/conntrack.h).
const (
	lifetimeTCPSyn         = 60 * time.Second
	lifetimeTCPEstablished = 6 * time.Hour
	lifetimeTCPClose       = 10 * time.Second
	lifetimeNonTCP         = 60 * time.Second
)

// backend is a backends map entry.
type backend struct {
	ID    uint32
	Addr  netip.Addr
	Port  uint16
	Flags uint8
}

// The backends every service test registers.
var (
	beA      = backend{ID: backendA, Addr: podA.IP, Port: backendPort}
	beB      = backend{ID: backendB, Addr: podB.IP, Port: backendPort}
	beC      = backend{ID: backendC, Addr: podC.IP, Port: backendPort}
	beRemote = backend{ID: backendRemote, Addr: remotePodIP, Port: backendPort}

	allBackends = []backend{beA, beB, beC, beRemote}
)

// frontend is what a client connects to.
type frontend struct {
	Addr  netip.Addr // zero (the unspecified address) for a NodePort
	Port  uint16
	Proto uint8
}

// service is a frontend with its svc_info and slots.
type service struct {
	ID              uint32
	Frontend        frontend
	Scope           maps.SvcScope
	Algo            maps.LBAlgo
	Flags           uint8
	AffinityTimeout uint32   // seconds
	Slots           []uint32 // backend ids in slots 1..n
}

// clusterIP is the internal-scope frontend vip:80 of proto, picking at
// random among the backend ids in slots.
func clusterIP(proto uint8, slots ...uint32) service {
	id := uint32(tcpSvcID)
	if proto == protoUDP {
		id = udpSvcID
	}
	return service{
		ID:       id,
		Frontend: frontend{Addr: vip, Port: vipPort, Proto: proto},
		Scope:    maps.ScopeInternal,
		Algo:     maps.AlgoRandom,
		Slots:    slots,
	}
}

// svcDatapath is from_pod, and to_pod sharing its maps, with every service
// map at hand.
type svcDatapath struct {
	*datapath
	services, slots, backends *ebpf.Map
	rr, maglev, affinity      *ebpf.Map
	conntrack, nodeAddrs      *ebpf.Map
	maglevInner               *ebpf.MapSpec
	node                      *progrun.Node
}

// Map sizes for tests: the loader sizes these maps from the node
// configuration too; smaller ones load faster and change no decision.
var testMapSizes = map[string]uint32{
	maps.MapServices:  1024,
	maps.MapSvcSlots:  4096,
	maps.MapBackends:  4096,
	maps.MapSvcRR:     1024,
	maps.MapMaglev:    1024,
	maps.MapAffinity:  4096,
	maps.MapConntrack: 16384,
}

// newServiceDatapath loads from_pod with fresh, unpinned maps and the Maglev
// table size set as the loader sets it: the program's maglev_table_size and
// the inner maps' size agree; to_pod shares the maps. It registers pods A, B
// and C and every backend in allBackends, then the services.
func newServiceDatapath(t *testing.T, svcs ...service) *svcDatapath {
	t.Helper()
	return newSizedServiceDatapath(t, testMapSizes, svcs...)
}

// newSizedServiceDatapath is newServiceDatapath with other map sizes.
func newSizedServiceDatapath(t *testing.T, sizes map[string]uint32, svcs ...service) *svcDatapath {
	t.Helper()
	n := loadNode(t, []string{maps.ProgFromPod, maps.ProgToPod}, sizes, testMaglevSize)
	d := &svcDatapath{
		datapath: &datapath{
			fromPod:   n.Programs[maps.ProgFromPod],
			toPod:     n.Programs[maps.ProgToPod],
			endpoints: maps.NewEndpoints(n.Maps[maps.MapEndpoints]),
			counters:  n.Maps[maps.MapCounters],
		},
		services:    n.Maps[maps.MapServices],
		slots:       n.Maps[maps.MapSvcSlots],
		backends:    n.Maps[maps.MapBackends],
		rr:          n.Maps[maps.MapSvcRR],
		maglev:      n.Maps[maps.MapMaglev],
		affinity:    n.Maps[maps.MapAffinity],
		conntrack:   n.Maps[maps.MapConntrack],
		nodeAddrs:   n.Maps[maps.MapNodeAddrs],
		maglevInner: n.MaglevInner,
		node:        n,
	}
	for _, p := range []pod{podA, podB, podC} {
		if err := d.endpoints.Put(p.IP, p.info()); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range allBackends {
		d.putBackend(t, b)
	}
	for _, s := range svcs {
		d.putService(t, s)
	}
	return d
}

func (d *svcDatapath) putBackend(t *testing.T, b backend) {
	t.Helper()
	v := maps.Backend{Addr: maps.Addr16(b.Addr), Port: maps.Port(b.Port), Family: maps.FamilyIPv4, Flags: b.Flags}
	if err := d.backends.Put(b.ID, &v); err != nil {
		t.Fatalf("backend %d: %v", b.ID, err)
	}
}

func (d *svcDatapath) deleteBackend(t *testing.T, id uint32) {
	t.Helper()
	if err := d.backends.Delete(id); err != nil {
		t.Fatalf("delete backend %d: %v", id, err)
	}
}

func (f frontend) key(scope maps.SvcScope) maps.SvcKey {
	k := maps.SvcKey{Port: maps.Port(f.Port), Proto: f.Proto, Family: maps.FamilyIPv4, Scope: uint8(scope)}
	if f.Addr.IsValid() && !f.Addr.IsUnspecified() {
		k.Addr = maps.Addr16(f.Addr)
	}
	return k
}

// putService writes the slots, then the frontend with its backend count,
// in the order user space must.
func (d *svcDatapath) putService(t *testing.T, s service) {
	t.Helper()
	d.setSlots(t, s.ID, s.Slots...)
	info := maps.SvcInfo{
		Id:              s.ID,
		Backends:        uint16(len(s.Slots)),
		Algo:            uint8(s.Algo),
		Flags:           s.Flags,
		AffinityTimeout: s.AffinityTimeout,
	}
	key := s.Frontend.key(s.Scope)
	if err := d.services.Put(&key, &info); err != nil {
		t.Fatalf("service %d: %v", s.ID, err)
	}
}

// setSlots points slots 1..n of a service at backend ids, leaving its
// backend count alone.
func (d *svcDatapath) setSlots(t *testing.T, svcID uint32, ids ...uint32) {
	t.Helper()
	for i, id := range ids {
		k := maps.SlotKey{SvcId: svcID, Slot: uint32(i + 1)}
		if err := d.slots.Put(&k, id); err != nil {
			t.Fatalf("slot %d of service %d: %v", i+1, svcID, err)
		}
	}
}

// putSlot writes one slot, e.g. one the backend count does not cover.
func (d *svcDatapath) putSlot(t *testing.T, svcID, slot, id uint32) {
	t.Helper()
	k := maps.SlotKey{SvcId: svcID, Slot: slot}
	if err := d.slots.Put(&k, id); err != nil {
		t.Fatalf("slot %d of service %d: %v", slot, svcID, err)
	}
}

// putMaglevTable installs a whole lookup table for a service, as user space
// swaps in a freshly built inner map.
func (d *svcDatapath) putMaglevTable(t *testing.T, svcID uint32, table []uint32) {
	t.Helper()
	if len(table) != testMaglevSize {
		t.Fatalf("Maglev table of %d entries, want %d", len(table), testMaglevSize)
	}
	m, err := ebpf.NewMap(d.maglevInner)
	if err != nil {
		t.Fatalf("create Maglev table: %v", err)
	}
	defer m.Close() // the outer map holds its own reference
	for i, id := range table {
		if err := m.Put(uint32(i), id); err != nil {
			t.Fatalf("Maglev entry %d: %v", i, err)
		}
	}
	if err := d.maglev.Put(svcID, m); err != nil {
		t.Fatalf("install Maglev table of service %d: %v", svcID, err)
	}
}

func (d *svcDatapath) putNodeAddr(t *testing.T, addr netip.Addr, ifindex uint32) {
	t.Helper()
	k := maps.NewEndpointKey(addr)
	if err := d.nodeAddrs.Put(&k, ifindex); err != nil {
		t.Fatalf("node address %s: %v", addr, err)
	}
}

func affinityKey(svcID uint32, client netip.Addr) maps.AffinityKey {
	return maps.AffinityKey{SvcId: svcID, Family: maps.FamilyIPv4, Client: maps.Addr16(client)}
}

func (d *svcDatapath) affinityEntry(t *testing.T, svcID uint32, client netip.Addr) (maps.AffinityValue, bool) {
	t.Helper()
	k := affinityKey(svcID, client)
	var v maps.AffinityValue
	if err := d.affinity.Lookup(&k, &v); err != nil {
		return v, false
	}
	return v, true
}

func (d *svcDatapath) putAffinity(t *testing.T, svcID uint32, client netip.Addr, v maps.AffinityValue) {
	t.Helper()
	k := affinityKey(svcID, client)
	if err := d.affinity.Put(&k, &v); err != nil {
		t.Fatal(err)
	}
}

// ctKey is the conntrack key of a tuple as seen on the wire.
func ctKey(proto uint8, saddr netip.Addr, sport uint16, daddr netip.Addr, dport uint16) maps.CtKey {
	return maps.CtKey{
		Saddr: maps.Addr16(saddr), Daddr: maps.Addr16(daddr),
		Sport: maps.Port(sport), Dport: maps.Port(dport),
		Proto: proto, Family: maps.FamilyIPv4,
	}
}

// ctKeyOf is the conntrack key of a flow's tuple.
func ctKeyOf(f flow) maps.CtKey { return ctKey(f.Proto, f.Src, f.Sport, f.Dst, f.Dport) }

func (d *svcDatapath) ctEntry(t *testing.T, k maps.CtKey) (maps.CtEntry, bool) {
	t.Helper()
	var e maps.CtEntry
	if err := d.conntrack.Lookup(&k, &e); err != nil {
		return e, false
	}
	return e, true
}

func (d *svcDatapath) putCtEntry(t *testing.T, k maps.CtKey, e maps.CtEntry) {
	t.Helper()
	if err := d.conntrack.Put(&k, &e); err != nil {
		t.Fatal(err)
	}
}

// ctAll returns every conntrack entry.
func (d *svcDatapath) ctAll(t *testing.T) map[maps.CtKey]maps.CtEntry {
	t.Helper()
	out, err := maps.Entries[maps.CtKey, maps.CtEntry](d.conntrack)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ctFlush empties conntrack, so the next packet of any flow is new.
func (d *svcDatapath) ctFlush(t *testing.T) {
	t.Helper()
	for k := range d.ctAll(t) {
		if err := d.conntrack.Delete(&k); err != nil {
			t.Fatal(err)
		}
	}
}

// ctWant is a conntrack entry without its expiry, which depends on the clock.
func ctWant(e maps.CtEntry) maps.CtEntry {
	e.Expires = 0
	return e
}

// ctRefresh is how often at most a packet pushes an entry's expiry out
// (bpf/lib/conntrack.h): a packet within it of the last push leaves the
// expiry alone, unless the new one is sooner.
const ctRefresh = time.Second

// expectCt checks the entry under k: every field as in want, and an expiry
// of lifetime after a moment within the run r. That holds exactly for an
// entry the run created or moved to another lifetime.
func (d *svcDatapath) expectCt(t *testing.T, what string, k maps.CtKey, r run, lifetime time.Duration, want maps.CtEntry) {
	t.Helper()
	d.expectCtWithin(t, what, k, r, lifetime, 0, want)
}

// expectCtTouched checks an existing entry after a run that kept its
// lifetime: as expectCt, but the expiry may lag by up to ctRefresh.
func (d *svcDatapath) expectCtTouched(t *testing.T, what string, k maps.CtKey, r run, lifetime time.Duration, want maps.CtEntry) {
	t.Helper()
	d.expectCtWithin(t, what, k, r, lifetime, ctRefresh, want)
}

func (d *svcDatapath) expectCtWithin(t *testing.T, what string, k maps.CtKey, r run, lifetime, slack time.Duration, want maps.CtEntry) {
	t.Helper()
	got, ok := d.ctEntry(t, k)
	if !ok {
		t.Errorf("%s: no conntrack entry under %s", what, fmtCtKey(k))
		return
	}
	if ctWant(got) != want {
		t.Errorf("%s: conntrack entry\n got  %+v\n want %+v", what, ctWant(got), want)
	}
	lo, hi := r.before+uint64(lifetime-slack), r.after+uint64(lifetime)
	if got.Expires < lo || got.Expires > hi {
		t.Errorf("%s: expires %s after the packet, want %s", what,
			time.Duration(int64(got.Expires)-int64(r.before)), lifetime)
	}
}

func fmtCtKey(k maps.CtKey) string {
	src := netip.AddrPortFrom(maps.AddrFrom16(k.Family, k.Saddr), maps.HostPort(k.Sport))
	dst := netip.AddrPortFrom(maps.AddrFrom16(k.Family, k.Daddr), maps.HostPort(k.Dport))
	return fmt.Sprintf("%s -> %s proto %d", src, dst, k.Proto)
}

// monotonic is bpf_ktime_get_ns()'s clock.
func monotonic(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// run is one packet through from_pod: its verdict, the packet that came
// out, and the clock either side of the run.
type run struct {
	verdict       uint32
	out           []byte
	before, after uint64
}

// send runs from_pod on frame as it arrives on from's veth.
func (d *svcDatapath) send(t *testing.T, from pod, frame []byte) run {
	t.Helper()
	r := run{before: monotonic(t)}
	r.verdict, r.out = d.runFromPod(t, from.Ifindex, frame)
	r.after = monotonic(t)
	return r
}

// flow is one TCP segment or UDP datagram as a test chooses it.
type flow struct {
	Proto        uint8
	Src, Dst     netip.Addr
	Sport, Dport uint16
	TCPFlags     uint8
	NoChecksum   bool // UDP sent without a checksum
	TTL          uint8
	ID           uint16
	Options      []byte // IPv4 options
	Payload      []byte
}

func tcpFlow(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags uint8) flow {
	return flow{Proto: protoTCP, Src: src, Dst: dst, Sport: sport, Dport: dport, TCPFlags: flags, TTL: 64, ID: 0x1111}
}

func udpFlow(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) flow {
	return flow{Proto: protoUDP, Src: src, Dst: dst, Sport: sport, Dport: dport, TTL: 64, ID: 0x2222,
		Payload: []byte("a datagram")}
}

// to is f with another destination, as DNAT leaves it.
func (f flow) to(addr netip.Addr, port uint16) flow {
	f.Dst, f.Dport = addr, port
	return f
}

// from is f with another source, as SNAT leaves it.
func (f flow) from(addr netip.Addr, port uint16) flow {
	f.Src, f.Sport = addr, port
	return f
}

// answer is the flow's reverse direction carrying flags.
func (f flow) answer(flags uint8) flow {
	f.Src, f.Dst = f.Dst, f.Src
	f.Sport, f.Dport = f.Dport, f.Sport
	f.TCPFlags = flags
	f.ID++
	return f
}

func (f flow) with(payload string) flow {
	f.Payload = []byte(payload)
	return f
}

// l4 is the TCP segment or UDP datagram with a fresh checksum.
func (f flow) l4() []byte {
	switch f.Proto {
	case protoTCP:
		return tcpSegment(f.Src, f.Dst, f.Sport, f.Dport, f.TCPFlags, f.Payload)
	case protoUDP:
		b := udp(f.Src, f.Dst, f.Sport, f.Dport, f.Payload)
		if f.NoChecksum {
			b[6], b[7] = 0, 0
		}
		return b
	}
	panic("flow of neither TCP nor UDP")
}

// ip is the IPv4 packet.
func (f flow) ip() []byte {
	return ipv4(ipv4Header{ID: f.ID, TTL: f.TTL, Protocol: f.Proto, Src: f.Src, Dst: f.Dst, Options: f.Options}, f.l4())
}

// sentBy is the frame as pod p puts it on its veth: to its gateway MAC.
func (f flow) sentBy(p pod) []byte { return ether(p.NodeMAC, p.MAC, ethPIPv4, f.ip()) }

// routedInto is the frame as from_pod hands it to pod p: one hop routed,
// TTL down by one, p's MAC as destination and its gateway MAC as source.
func (f flow) routedInto(p pod) []byte {
	f.TTL--
	return ether(p.MAC, p.NodeMAC, ethPIPv4, f.ip())
}

// tcpSegment is a TCP segment with the given flags and a fresh checksum.
var tcpSegment = packet.TCPSegment

// l4Checksum computes the TCP or UDP checksum of an IPv4 frame afresh: the
// value a sender would write (for UDP, a computed zero is sent as 0xffff).
func l4Checksum(frame []byte) uint16 {
	hdr := ipv4HeaderOf(frame)
	totLen := int(binary.BigEndian.Uint16(frame[offIPTotLen:]))
	l4 := slices.Clone(frame[ethHeaderLen+len(hdr) : ethHeaderLen+totLen])
	off := 16
	if hdr[9] == protoUDP {
		off = 6
	}
	l4[off], l4[off+1] = 0, 0
	src, _ := netip.AddrFromSlice(hdr[12:16])
	dst, _ := netip.AddrFromSlice(hdr[16:20])
	sum := csum.Checksum(l4, csum.Pseudo4(src, dst, hdr[9], len(l4)))
	if sum == 0 && hdr[9] == protoUDP {
		sum = 0xffff
	}
	return sum
}

func l4ChecksumField(frame []byte) uint16 {
	off := ethHeaderLen + len(ipv4HeaderOf(frame)) + 16
	if frame[offIPVersionIHL+9] == protoUDP {
		off -= 10
	}
	return binary.BigEndian.Uint16(frame[off:])
}

// expectChecksums checks that the IPv4 header checksum and the TCP or UDP
// checksum of frame verify and are exactly what a fresh computation gives.
// A UDP datagram without a checksum (zero) has none to check.
func expectChecksums(t *testing.T, frame []byte) {
	t.Helper()
	hdr := ipv4HeaderOf(frame)
	if !csum.Valid(hdr, 0) {
		t.Errorf("IPv4 header checksum %#04x does not verify", binary.BigEndian.Uint16(hdr[10:]))
	}
	if got, fresh := binary.BigEndian.Uint16(hdr[10:]), ipv4HeaderChecksum(hdr); got != fresh {
		t.Errorf("IPv4 header checksum %#04x, a fresh computation gives %#04x", got, fresh)
	}
	got := l4ChecksumField(frame)
	if hdr[9] == protoUDP && got == 0 {
		return
	}
	if !l4ChecksumValid(frame) {
		t.Errorf("L4 checksum %#04x does not verify", got)
	}
	if fresh := l4Checksum(frame); got != fresh {
		t.Errorf("L4 checksum %#04x, a fresh computation gives %#04x", got, fresh)
	}
}

// expectForwarded checks a packet from_pod routed into a local pod: verdict,
// every byte against want, and both checksums.
func expectForwarded(t *testing.T, r run, want []byte) {
	t.Helper()
	if r.verdict != tcActRedirect {
		t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", r.verdict, tcActRedirect)
	}
	expectBytes(t, "packet", r.out, want)
	expectChecksums(t, r.out)
}

// dstOf returns the destination address and port of a TCP or UDP frame.
func dstOf(frame []byte) netip.AddrPort {
	hdr := ipv4HeaderOf(frame)
	addr, _ := netip.AddrFromSlice(hdr[16:20])
	l4 := ethHeaderLen + len(hdr)
	return netip.AddrPortFrom(addr, binary.BigEndian.Uint16(frame[l4+2:]))
}

// backendAt names the backend at addr:port among bs.
func backendAt(bs []backend, ap netip.AddrPort) (backend, bool) {
	for _, b := range bs {
		if b.Addr == ap.Addr() && b.Port == ap.Port() {
			return b, true
		}
	}
	return backend{}, false
}

// podAt is the local pod with addr.
func podAt(addr netip.Addr) (pod, bool) {
	for _, p := range []pod{podA, podB, podC} {
		if p.IP == addr {
			return p, true
		}
	}
	return pod{}, false
}

// deliveredVia is the frame of f translated to backend b as it must leave
// from_pod: routed into b's pod, or, for a backend on another node, handed
// to the stack untouched apart from the translation. A client that is its
// own backend gets the frontend as source too (hairpin).
func deliveredVia(f flow, b backend, sender pod) []byte {
	g := f.to(b.Addr, b.Port)
	if b.Addr == f.Src {
		g = g.from(f.Dst, f.Sport)
	}
	if p, ok := podAt(b.Addr); ok {
		return g.routedInto(p)
	}
	return g.sentBy(sender)
}

// flowHash is flow4_hash of bpf/lib/flow.h, the hash Maglev indexes its
// table with: addresses and ports as the program holds them, the words of
// the packet read in the host's byte order.
func flowHash(f flow) uint32 {
	s, d := f.Src.As4(), f.Dst.As4()
	saddr := binary.NativeEndian.Uint32(s[:])
	daddr := binary.NativeEndian.Uint32(d[:])
	h := saddr ^ daddr*0x9e3779b1
	h ^= (uint32(maps.Port(f.Sport))<<16 | uint32(maps.Port(f.Dport))) * 0x85ebca6b
	h ^= uint32(f.Proto)
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// pinToOneCPU keeps the calling goroutine on one CPU until the returned
// function runs: state that is per CPU (round robin) then stays on one CPU.
func pinToOneCPU(t *testing.T) func() {
	t.Helper()
	runtime.LockOSThread()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	cpu := 0
	for !old.IsSet(cpu) {
		cpu++
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	return func() {
		if err := unix.SchedSetaffinity(0, &old); err != nil {
			t.Error(err)
		}
		runtime.UnlockOSThread()
	}
}

// expectTuple checks the addresses and ports of a TCP or UDP frame, for a
// readable message before the byte comparison.
func expectTuple(t *testing.T, frame []byte, src, dst netip.AddrPort) {
	t.Helper()
	hdr := ipv4HeaderOf(frame)
	l4 := frame[ethHeaderLen+len(hdr):]
	s, _ := netip.AddrFromSlice(hdr[12:16])
	d, _ := netip.AddrFromSlice(hdr[16:20])
	gotSrc := netip.AddrPortFrom(s, binary.BigEndian.Uint16(l4[0:]))
	gotDst := netip.AddrPortFrom(d, binary.BigEndian.Uint16(l4[2:]))
	if gotSrc != src || gotDst != dst {
		t.Errorf("packet %s -> %s, want %s -> %s", gotSrc, gotDst, src, dst)
	}
}

// withSportWhere returns f with the first source port from 1024 on for
// which ok holds of f with that port, to steer a checksum onto an edge.
func withSportWhere(f flow, ok func(flow) bool) flow {
	for p := 1024; p < 1<<16; p++ {
		f.Sport = uint16(p)
		if ok(f) {
			return f
		}
	}
	panic("no source port satisfies the condition")
}

// computedZero tells whether f's L4 checksum, computed afresh, is zero
// (which UDP sends as 0xffff).
func computedZero(f flow) bool {
	f.NoChecksum = false
	b := f.l4()
	off := 16
	if f.Proto == protoUDP {
		off = 6
	}
	b[off], b[off+1] = 0, 0
	return csum.Checksum(b, csum.Pseudo4(f.Src, f.Dst, f.Proto, len(b))) == 0
}

func addrPort(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }

// macs are a frame's Ethernet addresses, for messages.
func macs(frame []byte) string {
	return "dst " + net.HardwareAddr(frame[0:6]).String() + " src " + net.HardwareAddr(frame[6:12]).String()
}

// lifetimeOf is the conntrack lifetime after f as the only packet of its
// direction.
func lifetimeOf(f flow) time.Duration {
	switch {
	case f.Proto != protoTCP:
		return lifetimeNonTCP
	case f.TCPFlags&(tcpFIN|tcpRST) != 0:
		return lifetimeTCPClose
	case f.TCPFlags&tcpACK != 0:
		return lifetimeTCPEstablished
	}
	return lifetimeTCPSyn
}
