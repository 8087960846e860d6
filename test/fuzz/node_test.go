package fuzz_test

// The node every target runs against: three pods, services of every kind
// (hairpin, a backend on another node, backends on the node's own address,
// NodePort, hostPort, an external IP, no backends), SNAT through the node's
// address, and flows already tracked both ways. Every input starts from
// exactly this state.

import (
	"github.com/cilium/ebpf/ringbuf"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/maps"
)

// pod is an endpoint as the CNI plugin registers it.
type pod struct {
	IP      netip.Addr
	Ifindex uint32           // host-side veth
	MAC     net.HardwareAddr // the pod's eth0
	NodeMAC net.HardwareAddr // the host-side veth: the pod's gateway MAC
}

var (
	podA = pod{ip("10.244.1.10"), 10, mac("02:00:0a:f4:01:0a"), mac("ee:ee:00:00:00:0a")}
	podB = pod{ip("10.244.1.20"), 20, mac("02:00:0a:f4:01:14"), mac("ee:ee:00:00:00:14")}
	podC = pod{ip("10.244.1.30"), 30, mac("02:00:0a:f4:01:1e"), mac("ee:ee:00:00:00:1e")}
	pods = []pod{podA, podB, podC}

	nodeIP     = ip("192.168.1.5")  // the uplink's: NodePort, hostPort, SNAT
	remotePod  = ip("10.244.2.7")   // a pod on another node
	clusterIP  = ip("10.96.0.10")   // services with pods as backends
	kubeIP     = ip("10.96.0.1")    // services with the node as backend
	emptyIP    = ip("10.96.0.11")   // services without backends
	externalIP = ip("203.0.113.10") // an external IP of this node's services
	serverIP   = ip("198.51.100.7") // a host on the internet
	routerIP   = ip("192.0.2.1")    // a router on the way there

	uplinkMAC  = mac("52:54:00:00:00:01")
	gatewayMAC = mac("52:54:00:00:00:fe") // the uplink's next hop
)

const (
	uplinkIfindex = 2

	// Pods' traffic to outside the cluster leaves with nodeIP and a port
	// from this range; a small one, so that it runs out now and then.
	snatPortMin = 20000
	snatPortMax = 20015

	maglevSize = 251 // a prime; the loader's default is 16381
)

// backend is a backends map entry.
type backend struct {
	Addr        netip.Addr
	Port        uint16
	Terminating bool
}

// The backends, by id.
var backends = map[uint32]backend{
	1: {podA.IP, 8080, false}, // pod A reaching clusterIP:80 may get itself: hairpin
	2: {podB.IP, 8080, false},
	3: {podC.IP, 8080, true},
	4: {remotePod, 8080, false},
	5: {nodeIP, 6443, false}, // the API server on the node's address
	6: {podB.IP, 5353, false},
	7: {nodeIP, 5353, false},
	8: {podC.IP, 80, false},
}

// service is a frontend: on addr, or with addr 0.0.0.0 on every node
// address (NodePort, hostPort).
type service struct {
	ID       uint32
	Addr     netip.Addr
	Port     uint16
	Proto    uint8
	External bool // reachable from the network too, not only from pods
	Algo     maps.LBAlgo
	Flags    uint8
	Backends []uint32
}

// From the network, only Maglev or a single backend: the choice is the
// same every time, so FuzzXDPNetdev can compare XDP's with from_netdev's.
var services = []service{
	{1, clusterIP, 80, protoTCP, false, maps.AlgoRandom, 0, []uint32{1, 2, 3, 4}},
	{2, clusterIP, 53, protoUDP, false, maps.AlgoRoundRobin, 0, []uint32{6}},
	{3, kubeIP, 443, protoTCP, false, maps.AlgoRandom, 0, []uint32{5}},
	{4, kubeIP, 53, protoUDP, false, maps.AlgoRandom, 0, []uint32{7}},
	{5, netip.IPv4Unspecified(), 30080, protoTCP, true, maps.AlgoMaglev, maps.SvcFlagNodePort, []uint32{2, 3}},
	{6, netip.IPv4Unspecified(), 30053, protoUDP, true, maps.AlgoRandom, maps.SvcFlagNodePort | maps.SvcFlagAffinity, []uint32{6}},
	// A hostPort inside the SNAT port range, as a pod may ask for.
	{7, netip.IPv4Unspecified(), 20010, protoTCP, true, maps.AlgoRandom, 0, []uint32{8}},
	{8, externalIP, 80, protoTCP, true, maps.AlgoMaglev, maps.SvcFlagAffinity, []uint32{2, 3}},
	{9, emptyIP, 80, protoTCP, true, maps.AlgoRandom, 0, nil},
	{10, emptyIP, 53, protoUDP, true, maps.AlgoRandom, 0, nil},
}

// tracked is a service flow already in conntrack, both directions, as
// svc_backend4 (bpf/lib/svc.h) writes them.
type tracked struct {
	Client   netip.Addr
	Sport    uint16
	Service  uint32
	Frontend netip.Addr // the address the client used (a NodePort's node address)
	Backend  uint32
	TCPFlags uint8 // seen so far
}

var trackedFlows = []tracked{
	{podA.IP, 40000, 1, clusterIP, 2, tcpACK},
	{podA.IP, 40001, 1, clusterIP, 3, tcpACK | tcpFIN}, // closed
	{podA.IP, 40002, 1, clusterIP, 1, tcpACK},          // hairpin
	{podA.IP, 40003, 1, clusterIP, 4, tcpACK},          // to another node
	{podA.IP, 40100, 3, kubeIP, 5, tcpACK},
	{podA.IP, 40101, 4, kubeIP, 7, 0},
	{podC.IP, 50000, 2, clusterIP, 6, 0},
	{serverIP, 5555, 5, nodeIP, 2, tcpACK},
}

// masqueraded is a pod's flow SNAT already maps to nodeIP:Port. For an
// ICMP echo, Sport is the identifier and Dport 0.
type masqueraded struct {
	Proto uint8
	Pod   netip.Addr
	Sport uint16
	Dst   netip.Addr
	Dport uint16
	Port  uint16
}

var masqueradedFlows = []masqueraded{
	{protoTCP, podA.IP, 40000, serverIP, 443, 20001},
	{protoICMP, podB.IP, 0x1234, serverIP, 0, 20002},
	{protoUDP, podA.IP, 40003, serverIP, 53, 20003},
	{protoTCP, podA.IP, 40010, serverIP, 443, 20010}, // the hostPort's port
}

// Map sizes: small maps load fast and change no decision.
var mapSizes = map[string]uint32{
	maps.MapEndpoints:  64,
	maps.MapServices:   64,
	maps.MapSvcSlots:   256,
	maps.MapBackends:   64,
	maps.MapSvcRR:      64,
	maps.MapMaglev:     64,
	maps.MapAffinity:   256,
	maps.MapConntrack:  1024,
	maps.MapSNAT:       1024,
	maps.MapSockRevNat: 64,
}

// allPrograms are the programs BPF_PROG_RUN can run: the socket programs
// (bpf/sock.c) hook cgroups, see no frames, and the kernel has no test
// run for their program type.
var allPrograms = []string{maps.ProgFromPod, maps.ProgToPod, maps.ProgFromNetdev, maps.ProgToNetdev, maps.ProgXDPNetdev}

// node is the loaded node.
type node struct {
	*progrun.Node
	events *ringbuf.Reader // drop events, drained after every run
}

// loadNode loads every program, registers the pods, services, node
// address and SNAT configuration; reset adds the tracked flows.
func loadNode(tb testing.TB) *node {
	tb.Helper()
	if err := progrun.CheckLayout(); err != nil {
		tb.Fatal(err)
	}
	pn, err := progrun.LoadNode(allPrograms, mapSizes, maglevSize)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pn.Close)
	n := &node{Node: pn}
	// Every drop raises its event: a limit no run reaches.
	if err := maps.WriteEventConfig(pn.Maps[maps.MapEventConfig], maps.MaxDropEventRate, maps.MaxDropEventRate); err != nil {
		tb.Fatal(err)
	}
	if n.events, err = ringbuf.NewReader(pn.Maps[maps.MapEvents]); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { n.events.Close() })
	for _, p := range pods {
		n.put(tb, maps.MapEndpoints, maps.NewEndpointKey(p.IP), maps.NewEndpointInfo(p.Ifindex, p.MAC, p.NodeMAC, 0))
	}
	for id, b := range backends {
		v := maps.Backend{Addr: maps.Addr16(b.Addr), Port: maps.Port(b.Port), Family: maps.FamilyIPv4}
		if b.Terminating {
			v.Flags = maps.BackendFlagTerminating
		}
		n.put(tb, maps.MapBackends, id, v)
	}
	for _, s := range services {
		n.putService(tb, s)
	}
	n.put(tb, maps.MapNodeAddrs, maps.NewEndpointKey(nodeIP), uint32(uplinkIfindex))
	n.put(tb, maps.MapNatConfig, uint32(0), maps.NatConfig{
		Addr: maps.Addr16(nodeIP), PortMin: snatPortMin, PortMax: snatPortMax, Family: maps.FamilyIPv4, Enabled: 1,
	})
	for _, p := range []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.96.0.0/12")} {
		k := maps.NonmasqKey{Prefixlen: 32 + uint32(p.Bits()), Family: maps.FamilyIPv4, Addr: maps.Addr16(p.Addr())}
		n.put(tb, maps.MapNonmasq, k, uint32(1))
	}
	return n
}

// putService writes the slots, a Maglev table for Maglev services, then
// the frontend in each of its scopes, in the order user space must.
func (n *node) putService(tb testing.TB, s service) {
	tb.Helper()
	for i, id := range s.Backends {
		n.put(tb, maps.MapSvcSlots, maps.SlotKey{SvcId: s.ID, Slot: uint32(i + 1)}, id)
	}
	if s.Algo == maps.AlgoMaglev {
		table, err := ebpf.NewMap(n.MaglevInner)
		if err != nil {
			tb.Fatal(err)
		}
		defer table.Close() // the outer map holds its own reference
		for i := range uint32(maglevSize) {
			if err := table.Put(i, s.Backends[int(i)%len(s.Backends)]); err != nil {
				tb.Fatal(err)
			}
		}
		n.put(tb, maps.MapMaglev, s.ID, table)
	}
	scopes := []maps.SvcScope{maps.ScopeInternal}
	if s.External {
		scopes = append(scopes, maps.ScopeExternal)
	}
	for _, scope := range scopes {
		k := maps.SvcKey{Port: maps.Port(s.Port), Proto: s.Proto, Family: maps.FamilyIPv4, Scope: uint8(scope)}
		if !s.Addr.IsUnspecified() {
			k.Addr = maps.Addr16(s.Addr)
		}
		n.put(tb, maps.MapServices, k, maps.SvcInfo{Id: s.ID, Backends: uint16(len(s.Backends)), Algo: uint8(s.Algo), Flags: s.Flags, AffinityTimeout: 600})
	}
}

// reset empties what the programs write (conntrack, SNAT, affinity,
// fragments) and
// writes the tracked and masqueraded flows again, expiring in an hour.
func (n *node) reset(tb testing.TB) {
	tb.Helper()
	for _, name := range []string{maps.MapConntrack, maps.MapSNAT, maps.MapAffinity, maps.MapFrags} {
		m := n.Maps[name]
		var k []byte
		for m.NextKey(nil, &k) == nil {
			if err := m.Delete(k); err != nil {
				tb.Fatalf("empty %s: %v", name, err)
			}
		}
	}
	expires := maps.Monotonic() + uint64(time.Hour)
	for _, f := range trackedFlows {
		b := backends[f.Backend]
		s := serviceByID(f.Service)
		hairpin := b.Addr == f.Client
		fwd := maps.CtEntry{Expires: expires, SvcId: f.Service, BackendId: f.Backend, TcpFlags: f.TCPFlags}
		rev := maps.CtEntry{Expires: expires, SvcId: f.Service, BackendId: f.Backend, Flags: maps.CtFlagReply,
			NatAddr: maps.Addr16(f.Frontend), NatPort: maps.Port(s.Port)}
		replyTo := f.Client
		if hairpin {
			fwd.Flags, rev.Flags = maps.CtFlagHairpin, rev.Flags|maps.CtFlagHairpin
			replyTo = f.Frontend
		}
		n.put(tb, maps.MapConntrack, ctKey(s.Proto, f.Client, f.Sport, f.Frontend, s.Port), fwd)
		n.put(tb, maps.MapConntrack, ctKey(s.Proto, b.Addr, b.Port, replyTo, f.Sport), rev)
	}
	for _, m := range masqueradedFlows {
		fwd := maps.NatEntry{Expires: expires, ToAddr: maps.Addr16(nodeIP), ToPort: maps.Port(m.Port)}
		rev := maps.NatEntry{Expires: expires, ToAddr: maps.Addr16(m.Pod), ToPort: maps.Port(m.Sport), Flags: maps.NatFlagReverse}
		n.put(tb, maps.MapSNAT, ctKey(m.Proto, m.Pod, m.Sport, m.Dst, m.Dport), fwd)
		n.put(tb, maps.MapSNAT, ctKey(m.Proto, m.Dst, m.Dport, nodeIP, m.Port), rev)
	}
}

func (n *node) put(tb testing.TB, mapName string, k, v any) {
	tb.Helper()
	if err := n.Maps[mapName].Put(k, v); err != nil {
		tb.Fatalf("%s: %v", mapName, err)
	}
}

// ctKey is the conntrack (and snat) key of a tuple as seen on the wire.
func ctKey(proto uint8, saddr netip.Addr, sport uint16, daddr netip.Addr, dport uint16) maps.CtKey {
	return maps.CtKey{
		Saddr: maps.Addr16(saddr), Daddr: maps.Addr16(daddr),
		Sport: maps.Port(sport), Dport: maps.Port(dport),
		Proto: proto, Family: maps.FamilyIPv4,
	}
}

func serviceByID(id uint32) service {
	for _, s := range services {
		if s.ID == id {
			return s
		}
	}
	panic("no service with that id")
}

// podWith is the local pod with address a.
func podWith(a netip.Addr) (pod, bool) {
	for _, p := range pods {
		if p.IP == a {
			return p, true
		}
	}
	return pod{}, false
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}
