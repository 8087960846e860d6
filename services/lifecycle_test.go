package services

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// frontendOf returns the programmed frontend of key.
func (m *Manager) frontendOf(t *testing.T, k maps.SvcKey) (maps.SvcInfo, []maps.Backend) {
	t.Helper()
	d := m.dump(t)
	info, ok := d.Services[k]
	if !ok {
		t.Fatalf("no frontend %+v", k)
	}
	var bs []maps.Backend
	for s := uint32(1); s <= uint32(info.Backends); s++ {
		id, ok := d.Slots[maps.SlotKey{SvcId: info.Id, Slot: s}]
		if !ok {
			t.Fatalf("frontend %d: slot %d missing", info.Id, s)
		}
		b, ok := d.Backends[id]
		if !ok {
			t.Fatalf("frontend %d: slot %d: backend %d missing", info.Id, s, id)
		}
		bs = append(bs, b)
	}
	return info, bs
}

func backendAddrs(bs []maps.Backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, netip.AddrPortFrom(maps.AddrFrom16(b.Family, b.Addr), maps.HostPort(b.Port)).String())
	}
	slices.Sort(out)
	return out
}

// putCT writes a conntrack entry of a flow through frontend id to backend.
func putCT(t *testing.T, m *Manager, sport uint16, svcID, backendID uint32, expires uint64) maps.CtKey {
	t.Helper()
	k := maps.CtKey{Saddr: maps.Addr16(addr("10.99.0.5")), Daddr: maps.Addr16(addr("10.96.0.10")),
		Sport: maps.Port(sport), Dport: maps.Port(80), Proto: unix.IPPROTO_TCP, Family: maps.FamilyIPv4}
	e := maps.CtEntry{SvcId: svcID, BackendId: backendID, Expires: expires, Packets: 3, Bytes: 180, TcpFlags: 0x12}
	if err := m.dp.conntrack.Update(&k, &e, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	return k
}

func (m *Manager) backendID(t *testing.T, ip string, port uint16) uint32 {
	t.Helper()
	st, err := m.load()
	if err != nil {
		t.Fatal(err)
	}
	b := st.prog.be[beKey{toIP16(addr(ip)), port, unix.IPPROTO_TCP}]
	if b == nil {
		t.Fatalf("no backend %s:%d", ip, port)
	}
	return b.ID
}

// A terminating backend loses its slot but keeps its backends entry,
// flagged, so its flows continue; a removed one disappears from the
// backends map, and its conntrack and affinity entries are flushed.
func TestTerminatingThenRemoved(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	web := clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.2", "10.0.0.3")
	web.SessionAffinity = AffinityClientIP
	if _, err := m.Apply(ctx, []Service{web}); err != nil {
		t.Fatal(err)
	}
	key := svcKey("10.96.0.10", 80, unix.IPPROTO_TCP, maps.ScopeInternal)
	info, _ := m.frontendOf(t, key)
	if info.Flags != maps.SvcFlagAffinity || info.AffinityTimeout != DefaultAffinityTimeout {
		t.Fatalf("affinity not programmed: %+v", info)
	}
	id2 := m.backendID(t, "10.0.0.2", 8080)
	id3 := m.backendID(t, "10.0.0.3", 8080)
	now, _ := monotonicNow()
	flow2 := putCT(t, m, 40000, info.Id, id2, now+60e9)
	flow3 := putCT(t, m, 40001, info.Id, id3, now+60e9)
	ak := maps.AffinityKey{SvcId: info.Id, Family: maps.FamilyIPv4, Client: maps.Addr16(addr("10.99.0.5"))}
	av := maps.AffinityValue{LastUsed: now, BackendId: id2}
	if err := m.dp.affinity.Update(&ak, &av, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}

	// .2 terminating: two slots left, .2 still in the backends map,
	// flagged; its flow stays.
	web.Backends[1].Terminating = true
	if _, err := m.Apply(ctx, []Service{web}); err != nil {
		t.Fatal(err)
	}
	info, active := m.frontendOf(t, key)
	if got := backendAddrs(active); !slices.Equal(got, []string{"10.0.0.1:8080", "10.0.0.3:8080"}) || info.Backends != 2 {
		t.Fatalf("active backends %v", got)
	}
	d := m.dump(t)
	if b, ok := d.Backends[id2]; !ok || b.Flags != maps.BackendFlagTerminating {
		t.Fatalf("terminating backend entry: %+v %v", b, ok)
	}
	if _, ok := d.CT[flow2]; !ok {
		t.Fatal("terminating backend's flow flushed")
	}
	if _, ok := d.Slots[maps.SlotKey{SvcId: info.Id, Slot: 3}]; ok {
		t.Fatal("slot 3 left behind")
	}

	// .2 removed: gone from the backends map. No table is scanned for it:
	// its flow points at a backend that no longer exists, which the
	// datapath ignores (it picks again), and the reaper deletes it; .3's
	// flow is kept throughout. (Its affinity went when it left the slots.)
	web.Backends = slices.Delete(web.Backends, 1, 2)
	sum, err := m.Apply(ctx, []Service{web})
	if err != nil {
		t.Fatal(err)
	}
	d = m.dump(t)
	if _, ok := d.Backends[id2]; ok {
		t.Fatal("removed backend still in the backends map")
	}
	if sum.Flushed != 0 {
		t.Fatalf("removing a backend flushed %d flows: no scan was needed", sum.Flushed)
	}
	if n, err := m.Conntrack().ReapExpired(); err != nil || n != 1 {
		t.Fatalf("reaped %d flows of the removed backend, want 1, err %v", n, err)
	}
	d = m.dump(t)
	if _, ok := d.CT[flow2]; ok {
		t.Fatal("the removed backend's flow survived the reaper")
	}
	if _, ok := d.CT[flow3]; !ok {
		t.Fatal("a staying backend's flow was reaped")
	}
	if _, ok := d.Affinity[ak]; ok {
		t.Fatal("affinity to the removed backend left behind")
	}

	// Not ready: like terminating, no slot, flows kept.
	web.Backends[1].Ready = false
	if _, err := m.Apply(ctx, []Service{web}); err != nil {
		t.Fatal(err)
	}
	if _, active = m.frontendOf(t, key); !slices.Equal(backendAddrs(active), []string{"10.0.0.1:8080"}) {
		t.Fatalf("active backends %v", backendAddrs(active))
	}
	if _, ok := m.dump(t).CT[flow3]; !ok {
		t.Fatal("not-ready backend's flow flushed")
	}

	// Deleting the service empties every map and flushes its flows.
	if _, err := m.Delete(ctx, "test", "web"); err != nil {
		t.Fatal(err)
	}
	d = m.dump(t)
	if len(d.Services)+len(d.Slots)+len(d.Backends)+len(d.CT) != 0 {
		t.Fatalf("left behind: %+v", d)
	}
}

// A backend shared by two services has one id; it is terminating only when
// no service has it active, and stays while one service lists it.
func TestSharedBackend(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	a := clusterIP("a", "10.96.0.1", "10.0.0.1", "10.0.0.2")
	b := clusterIP("b", "10.96.0.2", "10.0.0.2")
	if _, err := m.Apply(ctx, []Service{a, b}); err != nil {
		t.Fatal(err)
	}
	d := m.dump(t)
	if len(d.Backends) != 2 {
		t.Fatalf("backends %v, want 2 (10.0.0.2:8080 shared)", d.Backends)
	}
	id := m.backendID(t, "10.0.0.2", 8080)
	a.Backends[1].Terminating = true
	if _, err := m.Apply(ctx, []Service{a, b}); err != nil {
		t.Fatal(err)
	}
	if be := m.dump(t).Backends[id]; be.Flags != 0 {
		t.Fatalf("shared backend flagged terminating while b has it active: %+v", be)
	}
	infoA, _ := m.frontendOf(t, svcKey("10.96.0.1", 80, unix.IPPROTO_TCP, maps.ScopeInternal))
	infoB, _ := m.frontendOf(t, svcKey("10.96.0.2", 80, unix.IPPROTO_TCP, maps.ScopeInternal))
	now, _ := monotonicNow()
	flowA := putCT(t, m, 41000, infoA.Id, id, now+60e9)
	flowB := putCT(t, m, 41001, infoB.Id, id, now+60e9)
	// Removed from a only: a's flow to it goes, b's stays.
	a.Backends = a.Backends[:1]
	if _, err := m.Apply(ctx, []Service{a, b}); err != nil {
		t.Fatal(err)
	}
	d = m.dump(t)
	if _, ok := d.Backends[id]; !ok {
		t.Fatal("shared backend deleted while b lists it")
	}
	if _, ok := d.CT[flowA]; ok {
		t.Fatal("a's flow to the backend it dropped was kept")
	}
	if _, ok := d.CT[flowB]; !ok {
		t.Fatal("b's flow was flushed")
	}
}

// NodePort, external and load-balancer IPs: the right frontends in the
// right scopes, node ports on the wildcard address flagged; with
// externalTrafficPolicy Local the external ones get only local backends.
func TestFrontendsOfTypes(t *testing.T) {
	m := newTestManager(t)
	lb := Service{
		Namespace: "test", Name: "lb", Type: TypeLoadBalancer, ClusterIP: addr("10.96.0.20"),
		ExternalIPs: []netip.Addr{addr("192.0.2.1")}, LoadBalancerIPs: []netip.Addr{addr("198.51.100.7")},
		Ports:                 []Port{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30080}, {Name: "dns", Protocol: ProtocolUDP, Port: 53}},
		ExternalTrafficPolicy: TrafficPolicyLocal,
		Backends:              []Backend{{IP: addr("10.0.0.1"), Ready: true, Local: true}, {IP: addr("10.0.0.2"), Ready: true}},
	}
	sum, err := m.Apply(context.Background(), []Service{lb})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Added) != 1 {
		t.Fatalf("summary %+v", sum)
	}
	svcs, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	dnsNodePort := svcs[0].Ports[1].NodePort
	if dnsNodePort != 30000 {
		t.Fatalf("dns node port allocated %d, want the lowest free, 30000", dnsNodePort)
	}
	type want struct {
		addr     string
		port     uint16
		proto    uint8
		scope    maps.SvcScope
		backends []string
		flags    uint8
	}
	all := []string{"10.0.0.1:8080", "10.0.0.2:8080"}
	local := []string{"10.0.0.1:8080"}
	allDNS := []string{"10.0.0.1:53", "10.0.0.2:53"}
	localDNS := []string{"10.0.0.1:53"}
	tcp, udp := uint8(unix.IPPROTO_TCP), uint8(unix.IPPROTO_UDP)
	in, ex := maps.ScopeInternal, maps.ScopeExternal
	wants := []want{
		{"10.96.0.20", 80, tcp, in, all, 0},
		{"0.0.0.0", 30080, tcp, in, all, maps.SvcFlagNodePort},
		{"0.0.0.0", 30080, tcp, ex, local, maps.SvcFlagNodePort},
		{"192.0.2.1", 80, tcp, in, all, 0},
		{"192.0.2.1", 80, tcp, ex, local, 0},
		{"198.51.100.7", 80, tcp, in, all, 0},
		{"198.51.100.7", 80, tcp, ex, local, 0},
		{"10.96.0.20", 53, udp, in, allDNS, 0},
		{"0.0.0.0", uint16(dnsNodePort), udp, in, allDNS, maps.SvcFlagNodePort},
		{"0.0.0.0", uint16(dnsNodePort), udp, ex, localDNS, maps.SvcFlagNodePort},
		{"192.0.2.1", 53, udp, in, allDNS, 0},
		{"192.0.2.1", 53, udp, ex, localDNS, 0},
		{"198.51.100.7", 53, udp, in, allDNS, 0},
		{"198.51.100.7", 53, udp, ex, localDNS, 0},
	}
	ids := map[uint32]bool{}
	for _, w := range wants {
		info, bs := m.frontendOf(t, svcKey(w.addr, w.port, w.proto, w.scope))
		if got := backendAddrs(bs); !slices.Equal(got, w.backends) || info.Flags != w.flags {
			t.Errorf("%s:%d/%d scope %d: backends %v flags %d, want %v flags %d", w.addr, w.port, w.proto, w.scope, got, info.Flags, w.backends, w.flags)
		}
		ids[info.Id] = true
	}
	if d := m.dump(t); len(d.Services) != len(wants) || len(ids) != len(wants) {
		t.Fatalf("%d frontends with %d distinct ids, want %d", len(d.Services), len(ids), len(wants))
	}
	// The allocation sticks: applying without a node port keeps 30000.
	if _, err := m.Apply(context.Background(), []Service{lb}); err != nil {
		t.Fatal(err)
	}
	if svcs, _ = m.List(); svcs[0].Ports[1].NodePort != dnsNodePort {
		t.Fatalf("node port moved to %d", svcs[0].Ports[1].NodePort)
	}
}

// innerTable reads the Maglev table of frontend id.
func (m *Manager) innerTable(t *testing.T, id uint32) ([]uint32, uint32) {
	t.Helper()
	var inner *ebpf.Map
	if err := m.dp.maglev.Lookup(id, &inner); err != nil {
		t.Fatalf("maglev table of %d: %v", id, err)
	}
	defer inner.Close()
	info, err := inner.Info()
	if err != nil {
		t.Fatal(err)
	}
	mid, _ := info.ID()
	out := make([]uint32, inner.MaxEntries())
	for i := range out {
		if err := inner.Lookup(uint32(i), &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out, uint32(mid)
}

// A Maglev service's table is the paper's table of its active backends,
// swapped (a new inner map) when they change, left alone when they do not,
// and removed when the service stops using Maglev.
func TestMaglevProgrammed(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	web := clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.2", "10.0.0.3")
	web.Algorithm = AlgorithmMaglev
	if _, err := m.Apply(ctx, []Service{web}); err != nil {
		t.Fatal(err)
	}
	key := svcKey("10.96.0.10", 80, unix.IPPROTO_TCP, maps.ScopeInternal)
	info, _ := m.frontendOf(t, key)
	if info.Algo != uint8(maps.AlgoMaglev) {
		t.Fatalf("algo %d", info.Algo)
	}
	var mb []maglevBackend
	for _, ip := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		mb = append(mb, maglevBackend{ID: m.backendID(t, ip, 8080), Addr: netip.AddrPortFrom(addr(ip), 8080)})
	}
	table, id1 := m.innerTable(t, info.Id)
	if !slices.Equal(table, maglevTable(mb, loaderDefaultMaglev)) {
		t.Fatal("programmed table differs from maglevTable")
	}
	// A change that keeps the active set (a not-ready backend added)
	// leaves the table alone.
	web.Backends = append(web.Backends, Backend{IP: addr("10.0.0.9")})
	if _, err := m.Apply(ctx, []Service{web}); err != nil {
		t.Fatal(err)
	}
	if _, id := m.innerTable(t, info.Id); id != id1 {
		t.Fatal("table swapped though the active backends did not change")
	}
	// One backend terminating: a new table without it.
	web.Backends[0].Terminating = true
	if _, err := m.Apply(ctx, []Service{web}); err != nil {
		t.Fatal(err)
	}
	table, id2 := m.innerTable(t, info.Id)
	if id2 == id1 || !slices.Equal(table, maglevTable(mb[1:], loaderDefaultMaglev)) {
		t.Fatalf("table after a backend turned terminating: swapped %v, right contents %v", id2 != id1, slices.Equal(table, maglevTable(mb[1:], loaderDefaultMaglev)))
	}
	// Round robin: the table goes.
	web.Algorithm = AlgorithmRoundRobin
	if _, err := m.Apply(ctx, []Service{web}); err != nil {
		t.Fatal(err)
	}
	if d := m.dump(t); len(d.Maglev) != 0 {
		t.Fatalf("maglev tables left: %v", d.Maglev)
	}
	if info, _ = m.frontendOf(t, key); info.Algo != uint8(maps.AlgoRoundRobin) {
		t.Fatalf("algo %d", info.Algo)
	}
}

const loaderDefaultMaglev = 16381

// After an interrupted update (the dirty marker left behind) the next
// update rewrites the maps whole: stale frontends, orphan slots, tables and
// backends go, and flows of unknown frontends are flushed.
func TestResyncAfterInterruptedUpdate(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	svcs := []Service{clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.2")}
	if _, err := m.Apply(ctx, svcs); err != nil {
		t.Fatal(err)
	}
	want := m.dump(t)
	// Debris of an update that died half-way.
	stale := svcKey("10.96.0.99", 80, unix.IPPROTO_TCP, maps.ScopeInternal)
	must(t, m.dp.services.Update(&stale, &maps.SvcInfo{Id: 77, Backends: 1}, ebpf.UpdateAny))
	must(t, m.dp.slots.Update(&maps.SlotKey{SvcId: 77, Slot: 1}, uint32(500), ebpf.UpdateAny))
	must(t, m.dp.slots.Update(&maps.SlotKey{SvcId: 1, Slot: 9}, uint32(500), ebpf.UpdateAny))
	must(t, m.dp.backends.Update(uint32(500), &maps.Backend{Family: maps.FamilyIPv4}, ebpf.UpdateAny))
	now, _ := monotonicNow()
	orphanFlow := putCT(t, m, 42000, 77, 500, now+60e9)
	svcless := maps.CtKey{Sport: 1, Dport: 2, Proto: unix.IPPROTO_TCP, Family: maps.FamilyIPv4}
	must(t, m.dp.conntrack.Update(&svcless, &maps.CtEntry{Expires: now + 60e9}, ebpf.UpdateAny))
	must(t, os.WriteFile(filepath.Join(m.cfg.StateDir, dirtyFile), nil, 0o600))

	sum, err := m.Apply(ctx, svcs)
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Resynced {
		t.Fatal("no resync after an interrupted update")
	}
	got := m.dump(t)
	if _, ok := got.CT[orphanFlow]; ok {
		t.Fatal("flow of an unknown frontend kept")
	}
	if _, ok := got.CT[svcless]; !ok {
		t.Fatal("an entry that is not a service flow was flushed")
	}
	delete(got.CT, svcless)
	if d := diffDumps(want, got); d != "" {
		t.Fatalf("after resync:\n%s", d)
	}
	if _, err := os.Stat(filepath.Join(m.cfg.StateDir, dirtyFile)); !os.IsNotExist(err) {
		t.Fatal("dirty marker left")
	}
	// And the next update is an ordinary one again.
	if sum, err = m.Apply(ctx, svcs); err != nil || sum.Resynced || sum.MapWrites != 0 {
		t.Fatalf("second apply: %+v %v", sum, err)
	}
}

// node reset and init make new, empty maps; services.state survives, and
// the next update programs everything again with the same ids.
func TestResyncAfterNodeReinit(t *testing.T) {
	n := newTestNode(t)
	m := n.open(t)
	ctx := context.Background()
	svcs := []Service{clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.2")}
	if _, err := m.Apply(ctx, svcs); err != nil {
		t.Fatal(err)
	}
	want := m.dump(t)
	m.Close()
	must(t, os.RemoveAll(n.cfg.PinRoot))
	must(t, loader.Init(n.cfg))
	m = n.open(t)
	if d := m.dump(t); len(d.Services) != 0 {
		t.Fatal("maps survived reinit")
	}
	sum, err := m.Apply(ctx, svcs)
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Resynced || len(sum.Unchanged) != 1 {
		t.Fatalf("summary %+v, want a resync with web unchanged", sum)
	}
	if d := diffDumps(want, m.dump(t)); d != "" {
		t.Fatalf("after reinit:\n%s", d)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Concurrent updates from several managers (several CLI invocations) and
// goroutines serialize on the lock: every service lands, and the maps
// match the final state exactly.
func TestConcurrentUpserts(t *testing.T) {
	n := newTestNode(t)
	ms := []*Manager{n.open(t), n.open(t), n.open(t)}
	var wg sync.WaitGroup
	errs := make(chan error, 60)
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := clusterIP(fmt.Sprintf("s%d", i), fmt.Sprintf("10.96.2.%d", i+1), fmt.Sprintf("10.2.0.%d", i+1), "10.2.1.1")
			if _, err := ms[i%3].Upsert(context.Background(), s); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	svcs, err := ms[0].List()
	if err != nil || len(svcs) != 60 {
		t.Fatalf("%d services (%v), want 60", len(svcs), err)
	}
	d := ms[1].dump(t)
	if len(d.Services) != 60 || len(d.Slots) != 120 || len(d.Backends) != 61 {
		t.Fatalf("maps: %d frontends, %d slots, %d backends; want 60, 120, 61", len(d.Services), len(d.Slots), len(d.Backends))
	}
	sum, err := ms[2].Apply(context.Background(), svcs)
	if err != nil || sum.MapWrites != 0 {
		t.Fatalf("state and maps disagree after concurrent upserts: %+v %v", sum, err)
	}
}

// A removed backend's id is not handed to the next new backend: ids count
// up, so a flow recorded under the old id in a race with the removal can
// never reach a different backend.
func TestBackendIDsNotReusedAtOnce(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	if _, err := m.Apply(ctx, []Service{clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	gone := m.backendID(t, "10.0.0.2", 8080)
	if _, err := m.Apply(ctx, []Service{clusterIP("web", "10.96.0.10", "10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Apply(ctx, []Service{clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.3")}); err != nil {
		t.Fatal(err)
	}
	if id := m.backendID(t, "10.0.0.3", 8080); id == gone || id < gone {
		t.Fatalf("new backend got id %d; the removed one had %d", id, gone)
	}
	// Another manager (another process) continues the count.
	o := newManagerOn(t, m)
	if _, err := o.Apply(ctx, []Service{clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.3", "10.0.0.4")}); err != nil {
		t.Fatal(err)
	}
	if a, b := o.backendID(t, "10.0.0.4", 8080), m.backendID(t, "10.0.0.3", 8080); a <= b {
		t.Fatalf("ids went back: %d after %d", a, b)
	}
}

// Switching ClientIP affinity off deletes the frontend's affinity entries:
// switched on again later, it starts afresh instead of reviving choices
// made before.
func TestAffinityOffForgets(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	web := clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.2")
	web.SessionAffinity = AffinityClientIP
	if _, err := m.Apply(ctx, []Service{web}); err != nil {
		t.Fatal(err)
	}
	info, _ := m.frontendOf(t, svcKey("10.96.0.10", 80, unix.IPPROTO_TCP, maps.ScopeInternal))
	now, _ := monotonicNow()
	ak := maps.AffinityKey{SvcId: info.Id, Family: maps.FamilyIPv4, Client: maps.Addr16(addr("10.99.0.5"))}
	must(t, m.dp.affinity.Update(&ak, &maps.AffinityValue{LastUsed: now, BackendId: m.backendID(t, "10.0.0.1", 8080)}, ebpf.UpdateAny))
	web.SessionAffinity = AffinityNone
	web.AffinityTimeout = 0
	if _, err := m.Apply(ctx, []Service{web}); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.dump(t).Affinity[ak]; ok {
		t.Fatal("affinity entry survived affinity being switched off")
	}
}
