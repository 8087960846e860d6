package datapath_test

import (
	"testing"
	"time"

	"github.com/podpath/podpath/maps"
)

// Backends that only slots outside 1..n name: slot 0 does not exist for
// the datapath, and slots beyond the backend count are left over from a
// larger set. No new flow may ever reach them.
var (
	beSlot0  = backend{ID: 90, Addr: netip4("10.244.9.90"), Port: backendPort}
	beBeyond = backend{ID: 91, Addr: netip4("10.244.9.91"), Port: backendPort}
)

// sendNewFlow sends the first packet of f from client and returns the
// backend among candidates it was translated to, after checking the packet
// is exactly f translated to that backend and delivered accordingly.
func (d *svcDatapath) sendNewFlow(t *testing.T, client pod, f flow, candidates []backend) backend {
	t.Helper()
	r := d.send(t, client, f.sentBy(client))
	b, ok := backendAt(candidates, dstOf(r.out))
	if !ok {
		t.Fatalf("flow from port %d went to %s: none of the candidates (verdict %d)", f.Sport, dstOf(r.out), r.verdict)
	}
	wantVerdict := uint32(tcActRedirect)
	if _, local := podAt(b.Addr); !local {
		wantVerdict = tcActOK
	}
	if r.verdict != wantVerdict {
		t.Errorf("flow from port %d to %s: verdict %d, want %d", f.Sport, dstOf(r.out), r.verdict, wantVerdict)
	}
	expectBytes(t, "translated packet", r.out, deliveredVia(f, b, client))
	expectChecksums(t, r.out)
	return b
}

// Random selection spreads new flows over every backend in slots 1..n, and
// never picks a slot outside them.
func TestServiceSelectionRandom(t *testing.T) {
	d := newServiceDatapath(t, clusterIP(protoTCP, backendB, backendC, backendRemote))
	d.putBackend(t, beSlot0)
	d.putBackend(t, beBeyond)
	d.putSlot(t, tcpSvcID, 0, beSlot0.ID)
	d.putSlot(t, tcpSvcID, 4, beBeyond.ID)
	candidates := []backend{beB, beC, beRemote, beSlot0, beBeyond}

	const flows = 300
	chosen := map[uint32]int{}
	for i := range flows {
		b := d.sendNewFlow(t, podA, tcpFlow(podA.IP, uint16(20000+i), vip, vipPort, tcpSYN), candidates)
		chosen[b.ID]++
	}
	for _, b := range []backend{beSlot0, beBeyond} {
		if chosen[b.ID] != 0 {
			t.Errorf("%d flows went to backend %d, named only by a slot outside 1..3", chosen[b.ID], b.ID)
		}
	}
	// 100 each expected; below 50 is more than 6 standard deviations off.
	for _, b := range []backend{beB, beC, beRemote} {
		if chosen[b.ID] < 50 {
			t.Errorf("backend %d got %d of %d flows, want about a third: %v", b.ID, chosen[b.ID], flows, chosen)
		}
	}
}

// Round robin gives consecutive new flows consecutive slots, wrapping from
// n to 1. The cursor is per CPU, so the test stays on one CPU. When the
// service shrinks, the cycle shrinks with it; the slot left beyond the new
// count is never used.
func TestServiceSelectionRoundRobin(t *testing.T) {
	defer pinToOneCPU(t)()
	svc := clusterIP(protoTCP, backendB, backendC, backendRemote)
	svc.Algo = maps.AlgoRoundRobin
	d := newServiceDatapath(t, svc)
	d.putBackend(t, beBeyond)
	d.putSlot(t, tcpSvcID, 4, beBeyond.ID)
	candidates := []backend{beB, beC, beRemote, beBeyond}
	slotOf := func(svc service, b backend) int {
		for i, id := range svc.Slots {
			if id == b.ID {
				return i + 1
			}
		}
		return 0
	}
	port := uint16(21000)
	cycle := func(svc service, flows int) {
		t.Helper()
		var slots []int
		for range flows {
			port++
			b := d.sendNewFlow(t, podA, tcpFlow(podA.IP, port, vip, vipPort, tcpSYN), candidates)
			slots = append(slots, slotOf(svc, b))
		}
		n := len(svc.Slots)
		for i, s := range slots {
			if s == 0 || (i > 0 && s != slots[i-1]%n+1) {
				t.Errorf("slots chosen %v, want consecutive slots of 1..%d", slots, n)
				return
			}
		}
	}
	cycle(svc, 9)

	svc.Slots = []uint32{backendB, backendC}
	d.putService(t, svc) // slot 3 stays written, beyond the count
	cycle(svc, 6)
}

// Maglev looks the flow's hash up in the service's table: the backend is
// table[hash % maglev_table_size]. Every entry of the table here names its
// own backend (B's address, port 10000 + index), so the port a flow arrives
// at shows the entry used. The same flow maps to the same entry every time:
// after conntrack forgot it, and on another node with the same table. A
// new table, swapped in whole, is used whole.
func TestServiceSelectionMaglev(t *testing.T) {
	entries := make([]backend, testMaglevSize)
	table := make([]uint32, testMaglevSize)
	svc := clusterIP(protoTCP)
	svc.Algo = maps.AlgoMaglev
	for i := range entries {
		entries[i] = backend{ID: uint32(1000 + i), Addr: podB.IP, Port: uint16(10000 + i)}
		table[i] = entries[i].ID
		svc.Slots = append(svc.Slots, entries[i].ID)
	}
	load := func() *svcDatapath {
		d := newServiceDatapath(t)
		for _, b := range entries {
			d.putBackend(t, b)
		}
		d.putMaglevTable(t, svc.ID, table)
		d.putService(t, svc)
		return d
	}
	var flows []flow
	for i := range 64 {
		client := []pod{podA, podC}[i%2]
		flows = append(flows, tcpFlow(client.IP, uint16(1024+i*977), vip, vipPort, tcpSYN))
	}
	clientOf := func(f flow) pod { p, _ := podAt(f.Src); return p }

	d := load()
	first := map[int]uint16{}
	used := map[uint16]bool{}
	for i, f := range flows {
		b := d.sendNewFlow(t, clientOf(f), f, entries)
		index := uint32(b.Port - 10000)
		if want := flowHash(f) % testMaglevSize; index != want {
			t.Errorf("flow %s:%d used table entry %d, want hash %#08x %% %d = %d",
				f.Src, f.Sport, index, flowHash(f), testMaglevSize, want)
		}
		first[i] = b.Port
		used[b.Port] = true
	}
	if len(used) < 32 {
		t.Errorf("64 flows used only %d table entries", len(used))
	}

	d.ctFlush(t)
	other := load()
	for i, f := range flows {
		if b := d.sendNewFlow(t, clientOf(f), f, entries); b.Port != first[i] {
			t.Errorf("flow %d, conntrack forgotten: port %d, first time %d", i, b.Port, first[i])
		}
		if b := other.sendNewFlow(t, clientOf(f), f, entries); b.Port != first[i] {
			t.Errorf("flow %d on another node: port %d, first time %d", i, b.Port, first[i])
		}
	}

	allC := make([]uint32, testMaglevSize)
	for i := range allC {
		allC[i] = backendC
	}
	d.putMaglevTable(t, svc.ID, allC)
	d.ctFlush(t)
	for _, f := range flows[:8] {
		if b := d.sendNewFlow(t, clientOf(f), f, append([]backend{beC}, entries...)); b.ID != backendC {
			t.Errorf("after the table swap, flow went to backend %d, want C (%d)", b.ID, backendC)
		}
	}
}

// With ClientIP affinity a client's new flows go to the backend its last
// flow went to, while that choice is younger than the timeout and the
// backend is not terminating; otherwise a new choice is made and
// remembered. Round robin on one CPU makes "a new choice" visible: it would
// have picked the other backend.
func TestServiceSelectionAffinity(t *testing.T) {
	defer pinToOneCPU(t)()
	const timeout = 30 // seconds
	svc := clusterIP(protoTCP, backendB, backendC)
	svc.Algo = maps.AlgoRoundRobin
	svc.Flags = maps.SvcFlagAffinity
	svc.AffinityTimeout = timeout
	d := newServiceDatapath(t, svc)
	candidates := []backend{beB, beC}
	other := func(b backend) backend {
		if b.ID == backendB {
			return beC
		}
		return beB
	}
	port := uint16(41000)
	newFlow := func() (backend, run) {
		t.Helper()
		port++
		before := monotonic(t)
		b := d.sendNewFlow(t, podA, tcpFlow(podA.IP, port, vip, vipPort, tcpSYN), candidates)
		return b, run{before: before, after: monotonic(t)}
	}
	expectAffinity := func(what string, b backend, r run) {
		t.Helper()
		v, ok := d.affinityEntry(t, svc.ID, podA.IP)
		if !ok {
			t.Fatalf("%s: no affinity entry for %s", what, podA.IP)
		}
		if v.BackendId != b.ID || v.LastUsed < r.before || v.LastUsed > r.after {
			t.Errorf("%s: affinity entry backend %d last used %d, want backend %d last used within [%d, %d]",
				what, v.BackendId, v.LastUsed, b.ID, r.before, r.after)
		}
	}
	age := func(b backend, by time.Duration) {
		d.putAffinity(t, svc.ID, podA.IP, maps.AffinityValue{LastUsed: monotonic(t) - uint64(by), BackendId: b.ID})
	}

	x, r := newFlow()
	expectAffinity("first flow", x, r)

	// Round robin would pick the other backend now.
	if b, r := newFlow(); b != x {
		t.Errorf("second flow from the same client went to backend %d, want %d", b.ID, x.ID)
	} else {
		expectAffinity("second flow", x, r)
	}

	age(x, (timeout-5)*time.Second)
	if b, _ := newFlow(); b != x {
		t.Errorf("flow %ds after the last one went to backend %d, want %d", timeout-5, b.ID, x.ID)
	}

	age(x, (timeout+1)*time.Second)
	y, r := newFlow()
	if y != other(x) {
		t.Errorf("flow after the affinity timed out went to backend %d, want a new choice (%d)", y.ID, other(x).ID)
	}
	expectAffinity("after the timeout", y, r)

	// y is terminating: user space marks it and takes it out of the slots.
	terminating := y
	terminating.Flags = maps.BackendFlagTerminating
	d.putBackend(t, terminating)
	svc.Slots = []uint32{x.ID}
	d.putService(t, svc)
	b, r := newFlow()
	if b != x {
		t.Errorf("flow while the affinity backend is terminating went to backend %d, want %d", b.ID, x.ID)
	}
	expectAffinity("after the backend started terminating", x, r)
}
