package datapath_test

import (
	"fmt"
	stdmaps "maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/podpath/podpath/maps"
)

// Affinity is an LRU map keyed by service and client: when it is full, a
// new flow is never refused; the least recently used clients are forgotten.
// A client that keeps opening connections keeps its entry (each lookup marks
// it used) and so its backend. A forgotten client's open connections keep
// theirs, in both directions: conntrack carries them, not affinity. Its
// next new connection is a new choice, remembered again; round robin on one
// CPU makes that choice the other backend. A pod sends only from its own
// address, so one client fills the map here, through many services: the
// service is half of the key.
func TestAffinityFullForgetsIdleClients(t *testing.T) {
	defer pinToOneCPU(t)()
	const size, pairs, every = 64, 320, 8
	sizes := stdmaps.Clone(testMapSizes)
	sizes[maps.MapAffinity] = size

	// Services 100 on, at 10.96.1.0:80 on; the last one is the active
	// client's, the others are each opened once.
	svcs := make([]service, pairs+1)
	for i := range svcs {
		s := clusterIP(protoTCP, backendB, backendC)
		s.ID = uint32(100 + i)
		s.Frontend.Addr = netip.AddrFrom4([4]byte{10, 96, byte(1 + i/256), byte(i)})
		s.Algo = maps.AlgoRoundRobin
		s.Flags = maps.SvcFlagAffinity
		s.AffinityTimeout = 3600
		svcs[i] = s
	}
	d := newSizedServiceDatapath(t, sizes, svcs...)
	active, idle := svcs[pairs], svcs[:pairs]
	candidates := []backend{beB, beC}
	other := map[uint32]backend{backendB: beC, backendC: beB}
	expectAffinity := func(what string, s service, b backend) {
		t.Helper()
		if v, ok := d.affinityEntry(t, s.ID, podA.IP); !ok || v.BackendId != b.ID {
			t.Fatalf("%s: affinity entry of service %d backend %d (present %v), want backend %d", what, s.ID, v.BackendId, ok, b.ID)
		}
	}
	expectAtMostSize := func(what string) int {
		t.Helper()
		all, err := maps.Entries[maps.AffinityKey, maps.AffinityValue](d.affinity)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) > size {
			t.Errorf("%s: %d affinity entries in a map of %d", what, len(all), size)
		}
		return len(all)
	}

	activePort := uint16(50000)
	newActiveFlow := func() backend {
		t.Helper()
		activePort++
		return d.sendNewFlow(t, podA, tcpFlow(podA.IP, activePort, active.Frontend.Addr, vipPort, tcpSYN), candidates)
	}
	kept := newActiveFlow()
	expectAffinity("the active client's first flow", active, kept)

	// The first idle pair's connection, open, stays open while its pair is
	// forgotten; first is its backend.
	var (
		open  flow
		first backend
	)
	for i, s := range idle {
		// Ports apart: flows to one backend must not share a reply tuple.
		f := tcpFlow(podA.IP, uint16(40000+i), s.Frontend.Addr, vipPort, tcpSYN)
		b := d.sendNewFlow(t, podA, f, candidates)
		if i == 0 {
			open, first = f, b
		}
		if i%every == 0 {
			if b := newActiveFlow(); b != kept {
				t.Fatalf("after %d new pairs the active client's new flow went to backend %d, want %d", i+1, b.ID, kept.ID)
			}
			expectAffinity("the active client", active, kept)
			expectAtMostSize(fmt.Sprintf("after %d new pairs", i+1))
		}
	}
	left := expectAtMostSize("after every pair")
	var remembered int
	for _, s := range idle[:min(size, len(idle))] {
		if _, ok := d.affinityEntry(t, s.ID, podA.IP); ok {
			remembered++
		}
	}
	if remembered != 0 {
		t.Errorf("%d of the %d earliest idle pairs are still remembered: the table was never full", remembered, size)
	}
	expectAffinity("the active client after every pair", active, kept)
	all := d.counts(t)
	for k, c := range all {
		if strings.Contains(k, "/drop_") && c.Packets != 0 {
			t.Errorf("%d packets dropped as %s: %v", c.Packets, k, all)
		}
	}

	// Forgotten: a new connection is a new choice, and is remembered.
	again := d.sendNewFlow(t, podA, tcpFlow(podA.IP, 40000+pairs, open.Dst, vipPort, tcpSYN), candidates)
	if again != other[first.ID] {
		t.Errorf("the forgotten pair's new flow went to backend %d, want a new choice (%d)", again.ID, other[first.ID].ID)
	}
	expectAffinity("the forgotten pair's new flow", idle[0], again)

	// Its connection opened before keeps its first backend both ways.
	p, _ := podAt(first.Addr)
	data := open
	data.TCPFlags = tcpACK | tcpPSH
	expectForwarded(t, d.send(t, podA, data.sentBy(podA)), data.to(first.Addr, first.Port).routedInto(p))
	answer := open.to(first.Addr, first.Port).answer(tcpACK)
	expectForwarded(t, d.send(t, p, answer.sentBy(p)), answer.from(open.Dst, vipPort).routedInto(podA))

	t.Logf("%d (service, client) pairs through an affinity map of %d: none refused, %d entries left, the active client kept backend %d",
		pairs+1, size, left, kept.ID)
}
