package services

import (
	"context"
	"fmt"
	stdmaps "maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// A ClusterIP service becomes one internal frontend whose slots point at
// its backends, each backend with the target port.
func TestApplyClusterIP(t *testing.T) {
	m := newTestManager(t)
	sum, err := m.Apply(context.Background(), []Service{clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.2", "10.0.0.3")})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Added) != 1 || sum.Added[0] != "test/web" {
		t.Fatalf("summary %+v, want test/web added", sum)
	}
	d := m.dump(t)
	info, ok := d.Services[svcKey("10.96.0.10", 80, unix.IPPROTO_TCP, maps.ScopeInternal)]
	if !ok || len(d.Services) != 1 {
		t.Fatalf("services map: %+v, want one internal frontend 10.96.0.10:80/TCP", d.Services)
	}
	if info.Backends != 3 || info.Algo != uint8(maps.AlgoRandom) || info.Flags != 0 || info.Id == 0 {
		t.Fatalf("frontend info %+v", info)
	}
	seen := map[string]bool{}
	for slot := uint32(1); slot <= 3; slot++ {
		id, ok := d.Slots[maps.SlotKey{SvcId: info.Id, Slot: slot}]
		if !ok {
			t.Fatalf("slot %d missing", slot)
		}
		b, ok := d.Backends[id]
		if !ok {
			t.Fatalf("slot %d: backend %d missing", slot, id)
		}
		if maps.HostPort(b.Port) != 8080 || b.Family != maps.FamilyIPv4 || b.Flags != 0 {
			t.Fatalf("backend %d: %+v", id, b)
		}
		seen[maps.AddrFrom16(b.Family, b.Addr).String()] = true
	}
	if len(seen) != 3 || len(d.Slots) != 3 || len(d.Backends) != 3 {
		t.Fatalf("slots %v backends %v", d.Slots, d.Backends)
	}
}

// Applying the same desired state again touches no map: no entry is
// written or deleted (counted at the writer), and every map, Maglev
// tables' inner maps included, holds exactly what it held.
func TestApplyIdempotent(t *testing.T) {
	m := newTestManager(t)
	svcs := []Service{
		clusterIP("a", "10.96.0.1", "10.0.0.1", "10.0.0.2"),
		clusterIP("b", "10.96.0.2", "10.0.0.2", "10.0.0.3"),
		{Namespace: "test", Name: "np", Type: TypeNodePort, ClusterIP: addr("10.96.0.3"),
			Ports:           []Port{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "dns", Protocol: ProtocolUDP, Port: 53}},
			ExternalIPs:     []netip.Addr{addr("192.0.2.10")},
			SessionAffinity: AffinityClientIP, ExternalTrafficPolicy: TrafficPolicyLocal, Algorithm: AlgorithmMaglev,
			Backends: []Backend{{IP: addr("10.0.0.4"), Ready: true, Local: true}, {IP: addr("10.0.0.5"), Ready: true},
				{IP: addr("10.0.0.6"), Ready: true, Terminating: true}}},
		{Namespace: "test", Name: "rr", ClusterIP: addr("10.96.0.4"), Algorithm: AlgorithmRoundRobin,
			Ports: []Port{{Port: 443}}, Backends: ready("10.0.0.7")},
	}
	if _, err := m.Apply(context.Background(), svcs); err != nil {
		t.Fatal(err)
	}
	before := m.dump(t)
	writes := m.countWrites()
	sum, err := m.Apply(context.Background(), svcs)
	if err != nil {
		t.Fatal(err)
	}
	if writes.total() != 0 || sum.MapWrites != 0 {
		t.Fatalf("second apply wrote %v (summary: %d writes)", writes, sum.MapWrites)
	}
	if len(sum.Unchanged) != 4 || len(sum.Added)+len(sum.Updated)+len(sum.Removed) != 0 {
		t.Fatalf("summary %+v, want 4 unchanged", sum)
	}
	if d := diffDumps(before, m.dump(t)); d != "" {
		t.Fatalf("maps changed:\n%s", d)
	}
	// The same state from another manager (another CLI invocation), in
	// another order and with defaults spelled out, is no change either.
	other := newManagerOn(t, m)
	writes = other.countWrites()
	rev := slices.Clone(svcs)
	slices.Reverse(rev)
	rev[0].Type, rev[0].Ports[0].Protocol = TypeClusterIP, ProtocolTCP
	if sum, err = other.Apply(context.Background(), rev); err != nil {
		t.Fatal(err)
	}
	if writes.total() != 0 || len(sum.Unchanged) != 4 {
		t.Fatalf("apply from a second manager wrote %v, summary %+v", writes, sum)
	}
}

// newManagerOn opens a second manager on m's node, as a second CLI
// invocation would.
func newManagerOn(t *testing.T, m *Manager) *Manager {
	t.Helper()
	o, err := Open(m.cfg.PinRoot, m.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// ids of the maps' entries that belong to one service.
func (m *Manager) serviceIDs(t *testing.T, key string) (frontends, backends map[uint32]bool) {
	t.Helper()
	frontends, backends = map[uint32]bool{}, map[uint32]bool{}
	st, err := m.load()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range st.prog.fe {
		if f.Service == key {
			frontends[f.ID] = true
			for _, id := range f.Members {
				backends[id] = true
			}
		}
	}
	return frontends, backends
}

// Changing one service of many writes only that service's entries: its
// frontend, its slots and its backends.
func TestApplyTouchesOnlyChanged(t *testing.T) {
	m := newTestManager(t)
	var svcs []Service
	for i := range 50 {
		svcs = append(svcs, clusterIP(fmt.Sprintf("s%d", i), fmt.Sprintf("10.96.1.%d", i+1),
			fmt.Sprintf("10.1.%d.1", i), fmt.Sprintf("10.1.%d.2", i), fmt.Sprintf("10.1.%d.3", i)))
	}
	if _, err := m.Apply(context.Background(), svcs); err != nil {
		t.Fatal(err)
	}
	fe0, be0 := m.serviceIDs(t, "test/s17")
	before := m.dump(t)

	// s17: one backend replaced, one added.
	svcs[17].Backends = ready("10.1.17.1", "10.1.17.3", "10.1.17.4", "10.1.17.5")
	writes := m.countWrites()
	sum, err := m.Apply(context.Background(), svcs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sum.Updated, []string{"test/s17"}) || len(sum.Unchanged) != 49 {
		t.Fatalf("summary %+v, want only test/s17 updated", sum)
	}
	fe1, be1 := m.serviceIDs(t, "test/s17")
	owned := func(k any) bool {
		switch k := k.(type) {
		case maps.SvcKey:
			return k == svcKey("10.96.1.18", 80, unix.IPPROTO_TCP, maps.ScopeInternal)
		case maps.SlotKey:
			return fe0[k.SvcId] || fe1[k.SvcId]
		case uint32:
			return be0[k] || be1[k]
		}
		return false
	}
	after := m.dump(t)
	check := func(name string, changed []any) {
		for _, k := range changed {
			if !owned(k) {
				t.Errorf("%s entry %+v changed, not test/s17's", name, k)
			}
		}
	}
	check("services", changedKeys(before.Services, after.Services))
	check("svc_slots", changedKeys(before.Slots, after.Slots))
	check("backends", changedKeys(before.Backends, after.Backends))
	// Backend .2 out, .4 and .5 in: 2 backends written, 1 deleted. Slots
	// [.1 .2 .3] become [.1 .3 .4 .5] (the last slot's backend fills the
	// hole, new ones are appended): 3 slot writes; then the count.
	want := writeCounter{maps.MapBackends: 3, maps.MapSvcSlots: 3, maps.MapServices: 1}
	if !stdmaps.Equal(writes, want) {
		t.Errorf("writes %v, want %v", writes, want)
	}
}

func changedKeys[K, V comparable](a, b map[K]V) []any {
	var out []any
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	return out
}
