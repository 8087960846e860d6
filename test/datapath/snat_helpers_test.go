package datapath_test

// Egress SNAT as the uplink's two tc programs see it: to_netdev (egress)
// masquerades pods' traffic to outside the cluster as the node address
// 10.0.0.1, from_netdev (ingress) turns the replies and ICMP errors back.
// Both are loaded sharing one set of fresh, unpinned maps, as their pins make
// them share on a node, and nat_config, nonmasq and endpoints are seeded as
// node init and the CNI plugin write them. Expected frames are built here
// from scratch, every length and checksum computed afresh; the only thing a
// test takes from the program's output is the port it allocated, which is
// random by design.

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/internal/csum"
	"github.com/podpath/podpath/internal/packet"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/maps"
)

const (
	protoICMP = packet.ProtoICMP
	protoGRE  = 47

	icmpEchoReply    = 0
	icmpDestUnreach  = 3
	icmpEchoRequest  = 8
	icmpTimeExceeded = 11

	uplinkIfindex = 2

	serverPort = 443   // what the pods talk to outside
	podPort    = 40000 // the pod's source port

	// The default allocation range of these tests.
	snatPortMin = 20000
	snatPortMax = 20999

	// The snat map's size unless a test wants it tiny.
	snatTestMapSize = 1024
)

var (
	masqIP       = netip4("10.0.0.1")                      // the node address pods' traffic leaves with
	podCIDR      = netip.MustParsePrefix("10.244.0.0/16")  // the cluster's pods: never masqueraded
	extraNonmasq = netip.MustParsePrefix("203.0.113.0/24") // an extra non-masquerade range
	clusterPodIP = netip4("10.244.2.3")                    // a pod on another node
	serverIP     = netip4("198.51.100.7")                  // a host on the internet
	server2IP    = netip4("198.51.100.8")                  // another one
	routerIP     = netip4("192.0.2.1")                     // a router on the way, sends ICMP errors
	uplinkMAC    = mustMAC("52:54:00:00:00:01")            // the node's uplink
	nextHopMAC   = mustMAC("52:54:00:00:00:fe")            // the uplink's gateway
	masqNonmasqs = []netip.Prefix{podCIDR, extraNonmasq}   // what node init writes to nonmasq
	masqPods     = []pod{podA, podB}                       // the local endpoints
	noNATStats   = map[string]uint64{}                     // every statistic zero
	emptyMapping = map[maps.CtKey]maps.NatEntry{}          // no snat entry at all
)

// snatSetup is what node init configures; zero values are the defaults.
type snatSetup struct {
	PortMin, PortMax uint16 // allocation range; default snatPortMin..snatPortMax
	Disabled         bool   // --no-snat
	Family           uint8  // nat_config's family; default AF_INET
	MaxMappings      uint32 // the snat map's max_entries; default snatTestMapSize
	Overlay          bool   // load to_overlay too, sharing the maps
	OverlayPort      uint16 // the node's VXLAN port, as the loader sets it (0: no overlay)
}

// snatDatapath is to_netdev and from_netdev (and to_overlay, if asked)
// sharing their maps.
type snatDatapath struct {
	*datapath
	toNetdev, fromNetdev *ebpf.Program
	toOverlay            *ebpf.Program // with snatSetup.Overlay
	snat, natStats       *ebpf.Map
	peers, conntrack     *ebpf.Map // seeded by the tests that need them
	nodeAddrs            *ebpf.Map
	setup                snatSetup
}

// newSNATDatapath loads both uplink programs with fresh, unpinned maps,
// from_netdev using to_netdev's maps, and seeds nat_config, nonmasq (the pod
// CIDR and one extra range) and the endpoints of pods A and B.
func newSNATDatapath(t *testing.T, s snatSetup) *snatDatapath {
	t.Helper()
	checkSkbContextLayout(t)
	if s.PortMin == 0 && s.PortMax == 0 {
		s.PortMin, s.PortMax = snatPortMin, snatPortMax
	}
	if s.Family == 0 {
		s.Family = maps.FamilyIPv4
	}
	if s.MaxMappings == 0 {
		s.MaxMappings = snatTestMapSize
	}
	sizes := map[string]uint32{maps.MapSNAT: s.MaxMappings}
	for name, size := range testMapSizes {
		sizes[name] = size
	}
	progs := []string{maps.ProgToNetdev, maps.ProgFromNetdev}
	if s.Overlay {
		progs = append(progs, maps.ProgToOverlay)
	}
	var vars map[string]any
	if s.OverlayPort != 0 {
		vars = map[string]any{maps.VarOverlayPort: networkOrder(s.OverlayPort)}
	}
	n := loadNodeVars(t, progs, sizes, 0, vars)
	d := &snatDatapath{
		datapath: &datapath{
			endpoints: maps.NewEndpoints(n.Maps[maps.MapEndpoints]),
			counters:  n.Maps[maps.MapCounters],
		},
		toNetdev:   n.Programs[maps.ProgToNetdev],
		fromNetdev: n.Programs[maps.ProgFromNetdev],
		toOverlay:  n.Programs[maps.ProgToOverlay],
		snat:       n.Maps[maps.MapSNAT],
		natStats:   n.Maps[maps.MapNatStats],
		peers:      n.Maps[maps.MapPeers],
		conntrack:  n.Maps[maps.MapConntrack],
		nodeAddrs:  n.Maps[maps.MapNodeAddrs],
		setup:      s,
	}
	cfg := maps.NatConfig{Addr: maps.Addr16(masqIP), PortMin: s.PortMin, PortMax: s.PortMax, Family: s.Family}
	if !s.Disabled {
		cfg.Enabled = 1
	}
	if err := n.Maps[maps.MapNatConfig].Put(uint32(0), &cfg); err != nil {
		t.Fatalf("nat_config: %v", err)
	}
	for _, p := range masqNonmasqs {
		k := maps.NonmasqKey{Prefixlen: 32 + uint32(p.Bits()), Family: maps.FamilyIPv4, Addr: maps.Addr16(p.Addr())}
		if err := n.Maps[maps.MapNonmasq].Put(&k, uint32(1)); err != nil {
			t.Fatalf("nonmasq %s: %v", p, err)
		}
	}
	for _, p := range masqPods {
		if err := d.endpoints.Put(p.IP, p.info()); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// egress runs to_netdev on frame as it leaves through the uplink.
func (d *snatDatapath) egress(t *testing.T, frame []byte) run {
	t.Helper()
	return runTC(t, d.toNetdev, maps.ProgToNetdev, skbContext{}, frame)
}

// ingress runs from_netdev on frame as it arrives on the uplink.
func (d *snatDatapath) ingress(t *testing.T, frame []byte) run {
	t.Helper()
	return runTC(t, d.fromNetdev, maps.ProgFromNetdev, skbContext{IngressIfindex: uplinkIfindex}, frame)
}

func runTC(t *testing.T, prog *ebpf.Program, name string, ctx skbContext, frame []byte) run {
	t.Helper()
	if ctx.IngressIfindex != 0 {
		requireIngressIfindex(t)
	}
	r := run{before: monotonic(t)}
	ret, out, err := progrun.RunTC(prog, ctx, frame)
	if err != nil {
		t.Fatalf("run %s: %v", name, err)
	}
	r.after = monotonic(t)
	r.verdict, r.out = ret, out
	return r
}

// leaving is an IPv4 packet as the stack hands it to the uplink: from the
// uplink's MAC to its gateway's.
func leaving(ip []byte) []byte { return ether(nextHopMAC, uplinkMAC, ethPIPv4, ip) }

// arriving is an IPv4 packet as it arrives on the uplink from its gateway.
func arriving(ip []byte) []byte { return ether(uplinkMAC, nextHopMAC, ethPIPv4, ip) }

// delivered is an IPv4 packet (built with the TTL one below what it arrived
// with) as forward4 hands it into pod p: p's MAC as destination, its
// gateway MAC as source.
func delivered(p pod, ip []byte) []byte { return ether(p.MAC, p.NodeMAC, ethPIPv4, ip) }

// icmpMessage is an ICMP message with a correct checksum (internal/packet).
var icmpMessage = packet.ICMP

// echo is an ICMP echo request or reply.
type echo struct {
	Type     uint8 // icmpEchoRequest or icmpEchoReply
	Src, Dst netip.Addr
	ID, Seq  uint16
	TTL      uint8
	Payload  []byte
}

func echoRequest(src netip.Addr, id uint16, dst netip.Addr) echo {
	return echo{Type: icmpEchoRequest, Src: src, Dst: dst, ID: id, Seq: 1, TTL: 64, Payload: []byte("ping payload")}
}

// from is e with another source and identifier, as SNAT leaves a request.
func (e echo) from(addr netip.Addr, id uint16) echo {
	e.Src, e.ID = addr, id
	return e
}

// to is e with another destination and identifier, as the reverse
// translation leaves a reply.
func (e echo) to(addr netip.Addr, id uint16) echo {
	e.Dst, e.ID = addr, id
	return e
}

// answer is the echo reply to a request.
func (e echo) answer() echo {
	e.Src, e.Dst = e.Dst, e.Src
	e.Type = icmpEchoReply
	return e
}

func (e echo) icmp() []byte {
	return icmpMessage(e.Type, 0, uint32(e.ID)<<16|uint32(e.Seq), e.Payload)
}

func (e echo) ip() []byte {
	return ipv4(ipv4Header{ID: 0x3333, TTL: e.TTL, Protocol: protoICMP, Src: e.Src, Dst: e.Dst}, e.icmp())
}

// routedInto is the packet as from_netdev hands it to pod p, one hop routed.
func (e echo) routedInto(p pod) []byte {
	e.TTL--
	return delivered(p, e.ip())
}

// icmpError is an ICMP error message (destination unreachable, time
// exceeded) quoting the start of the packet it is about.
type icmpError struct {
	Src, Dst   netip.Addr
	Type, Code uint8
	Rest       uint32 // fragmentation needed: the next-hop MTU
	Quote      []byte
	TTL        uint8
}

func (e icmpError) ip() []byte {
	return ipv4(ipv4Header{ID: 0x4444, TTL: e.TTL, Protocol: protoICMP, Src: e.Src, Dst: e.Dst},
		icmpMessage(e.Type, e.Code, e.Rest, e.Quote))
}

// l4Of is the IPv4 payload of a frame, up to the IPv4 total length.
func l4Of(frame []byte) []byte {
	hdr := ipv4HeaderOf(frame)
	totLen := int(binary.BigEndian.Uint16(frame[offIPTotLen:]))
	return frame[ethHeaderLen+len(hdr) : ethHeaderLen+totLen]
}

// srcPortOf is the source port of a TCP or UDP frame, or the identifier of
// an ICMP echo.
func srcPortOf(frame []byte) uint16 {
	l4 := l4Of(frame)
	if ipv4HeaderOf(frame)[9] == protoICMP {
		return binary.BigEndian.Uint16(l4[4:])
	}
	return binary.BigEndian.Uint16(l4[0:])
}

// expectSNATChecksums checks that the IPv4 header checksum and the TCP, UDP
// or ICMP checksum of frame verify and are exactly what a fresh computation
// gives.
func expectSNATChecksums(t *testing.T, frame []byte) {
	t.Helper()
	hdr := ipv4HeaderOf(frame)
	if hdr[9] != protoICMP {
		expectChecksums(t, frame)
		return
	}
	if !csum.Valid(hdr, 0) || binary.BigEndian.Uint16(hdr[10:]) != ipv4HeaderChecksum(hdr) {
		t.Errorf("IPv4 header checksum %#04x, a fresh computation gives %#04x", binary.BigEndian.Uint16(hdr[10:]), ipv4HeaderChecksum(hdr))
	}
	icmp := l4Of(frame)
	got, fresh := binary.BigEndian.Uint16(icmp[2:]), csum.Checksum(withFieldZeroed(icmp, 2), 0)
	if !csum.Valid(icmp, 0) || got != fresh {
		t.Errorf("ICMP checksum %#04x, a fresh computation gives %#04x", got, fresh)
	}
}

// expectVerdict checks a program's return code.
func expectVerdict(t *testing.T, r run, want uint32) {
	t.Helper()
	names := map[uint32]string{tcActOK: "TC_ACT_OK", tcActShot: "TC_ACT_SHOT", tcActRedirect: "TC_ACT_REDIRECT"}
	if r.verdict != want {
		t.Errorf("verdict %d, want %s (%d)", r.verdict, names[want], want)
	}
}

// allocatedPort is the source port (echo: identifier) a masqueraded frame
// left with; it must lie in the configured range.
func (d *snatDatapath) allocatedPort(t *testing.T, out []byte) uint16 {
	t.Helper()
	p := srcPortOf(out)
	if p < d.setup.PortMin || p > d.setup.PortMax {
		t.Errorf("allocated port %d outside the range %d-%d", p, d.setup.PortMin, d.setup.PortMax)
	}
	return p
}

// natKey is the snat key of a tuple as seen on the wire. An ICMP echo's
// identifier is the source port of a request and the destination port of a
// reply; the other port is zero.
func natKey(proto uint8, saddr netip.Addr, sport uint16, daddr netip.Addr, dport uint16) maps.CtKey {
	return ctKey(proto, saddr, sport, daddr, dport)
}

// forwardEntry and reverseEntry are the two halves of a mapping, their
// expiry and accounting aside.
func forwardEntry(port uint16) maps.NatEntry {
	return maps.NatEntry{ToAddr: maps.Addr16(masqIP), ToPort: maps.Port(port)}
}

func reverseEntry(p netip.Addr, port uint16) maps.NatEntry {
	return maps.NatEntry{ToAddr: maps.Addr16(p), ToPort: maps.Port(port), Flags: maps.NatFlagReverse}
}

// mappingOnly is an entry without its expiry and accounting: what a
// mapping says, not how much it was used.
func mappingOnly(e maps.NatEntry) maps.NatEntry {
	e.Expires, e.Packets, e.Bytes, e.TcpFlags = 0, 0, 0, 0
	return e
}

// mappings returns every snat entry.
func (d *snatDatapath) mappings(t *testing.T) map[maps.CtKey]maps.NatEntry {
	t.Helper()
	out, err := maps.Entries[maps.CtKey, maps.NatEntry](d.snat)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// expectMappings checks that the snat map holds exactly the entries of
// want, compared as mappingOnly.
func (d *snatDatapath) expectMappings(t *testing.T, want map[maps.CtKey]maps.NatEntry) {
	t.Helper()
	got := d.mappings(t)
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("no snat entry under %s", fmtCtKey(k))
			continue
		}
		if mappingOnly(g) != mappingOnly(w) {
			t.Errorf("snat entry under %s:\n got  %+v\n want %+v", fmtCtKey(k), mappingOnly(g), mappingOnly(w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected snat entry under %s: %+v", fmtCtKey(k), g)
		}
	}
}

// expectExpiry checks that the entry under k expires lifetime after a
// moment within the run r (give or take slack before it).
func (d *snatDatapath) expectExpiry(t *testing.T, k maps.CtKey, r run, lifetime, slack time.Duration) {
	t.Helper()
	e, ok := d.mappings(t)[k]
	if !ok {
		t.Errorf("no snat entry under %s", fmtCtKey(k))
		return
	}
	lo, hi := r.before+uint64(lifetime-slack), r.after+uint64(lifetime)
	if e.Expires < lo || e.Expires > hi {
		t.Errorf("snat entry under %s expires %s after the packet, want %s", fmtCtKey(k),
			time.Duration(int64(e.Expires)-int64(r.before)), lifetime)
	}
}

// putMapping writes both halves of a mapping of the flow pod:sport ->
// dst:dport over proto to the node's port, expiring at expires, as the
// allocator would have left it.
func (d *snatDatapath) putMapping(t *testing.T, proto uint8, p netip.Addr, sport uint16, dst netip.Addr, dport, port uint16, expires uint64) {
	t.Helper()
	fwd, rev := forwardEntry(port), reverseEntry(p, sport)
	fwd.Expires, rev.Expires = expires, expires
	fk, rk := natKey(proto, p, sport, dst, dport), natKey(proto, dst, dport, masqIP, port)
	if err := d.snat.Put(&fk, &fwd); err != nil {
		t.Fatalf("snat %s: %v", fmtCtKey(fk), err)
	}
	if err := d.snat.Put(&rk, &rev); err != nil {
		t.Fatalf("snat %s: %v", fmtCtKey(rk), err)
	}
}

// expire sets the expiry of the entry under k to a second ago.
func (d *snatDatapath) expire(t *testing.T, k maps.CtKey) {
	t.Helper()
	var e maps.NatEntry
	if err := d.snat.Lookup(&k, &e); err != nil {
		t.Fatalf("snat %s: %v", fmtCtKey(k), err)
	}
	e.Expires = monotonic(t) - uint64(time.Second)
	if err := d.snat.Put(&k, &e); err != nil {
		t.Fatal(err)
	}
}

// stats are the allocation statistics, summed over CPUs.
func (d *snatDatapath) stats(t *testing.T) map[string]uint64 {
	t.Helper()
	s, err := maps.ReadNATStats(d.natStats)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// expectStats checks every allocation statistic: those not in want are
// zero.
func (d *snatDatapath) expectStats(t *testing.T, want map[string]uint64) {
	t.Helper()
	got := d.stats(t)
	for _, name := range maps.NatStatNames {
		if got[name] != want[name] {
			t.Errorf("nat_stats %s = %d, want %d (all: %v)", name, got[name], want[name], got)
		}
	}
}
