package services

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
)

// manyServices returns n ClusterIP services with 3 backends each, every
// backend its own.
func manyServices(n int) []Service {
	out := make([]Service, n)
	for i := range out {
		vip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		bs := make([]Backend, 3)
		for j := range bs {
			bs[j] = Backend{IP: netip.AddrFrom4([4]byte{10, byte(1 + j), byte(i >> 8), byte(i)}), Ready: true}
		}
		out[i] = Service{
			Namespace: "scale",
			Name:      fmt.Sprintf("svc-%05d", i),
			ClusterIP: vip,
			Ports:     []Port{{Port: 80, TargetPort: 8080}},
			Backends:  bs,
		}
	}
	return out
}

// 10,000 services land whole: 10,000 frontends, 30,000 slots and
// backends; a change to one rewrites a handful of entries; removing them
// all leaves the maps empty.
func TestApply10k(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	svcs := manyServices(10000)
	sum, err := m.Apply(ctx, svcs)
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Added) != 10000 {
		t.Fatalf("%d added", len(sum.Added))
	}
	d := m.dump(t)
	if len(d.Services) != 10000 || len(d.Slots) != 30000 || len(d.Backends) != 30000 {
		t.Fatalf("maps hold %d frontends, %d slots, %d backends; want 10000, 30000, 30000", len(d.Services), len(d.Slots), len(d.Backends))
	}
	for k, info := range d.Services {
		if info.Backends != 3 {
			t.Fatalf("frontend %+v: %d backends", k, info.Backends)
		}
		for s := uint32(1); s <= 3; s++ {
			if _, ok := d.Backends[d.Slots[slotKey(info.Id, s)]]; !ok {
				t.Fatalf("frontend %d slot %d points nowhere", info.Id, s)
			}
		}
	}
	svcs[1234].Backends = svcs[1234].Backends[:2]
	writes := m.countWrites()
	if sum, err = m.Apply(ctx, svcs); err != nil {
		t.Fatal(err)
	}
	if len(sum.Updated) != 1 || writes.total() != 3 { // count, slot 3, backend
		t.Fatalf("one backend fewer in one service: %+v, writes %v", sum, writes)
	}
	if sum, err = m.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if len(sum.Removed) != 10000 {
		t.Fatalf("%d removed", len(sum.Removed))
	}
	if d = m.dump(t); len(d.Services)+len(d.Slots)+len(d.Backends) != 0 {
		t.Fatalf("left behind: %d frontends, %d slots, %d backends", len(d.Services), len(d.Slots), len(d.Backends))
	}
}

// BenchmarkApply10k programs 10,000 ClusterIP services with 3 backends
// each (10,000 frontends, 30,000 slots, 30,000 backends) into a node's
// empty maps, state file included. Run as root:
//
//	go test -run '^$' -bench Apply10k ./services/
func BenchmarkApply10k(b *testing.B) {
	m := newTestManager(b)
	ctx := context.Background()
	svcs := manyServices(10000)
	// The first update of a fresh node re-synchronises; measure ordinary ones.
	if _, err := m.Apply(ctx, nil); err != nil {
		b.Fatal(err)
	}
	b.Run("add", func(b *testing.B) {
		for range b.N {
			if _, err := m.Apply(ctx, svcs); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if _, err := m.Apply(ctx, nil); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	if _, err := m.Apply(ctx, svcs); err != nil {
		b.Fatal(err)
	}
	b.Run("change-one", func(b *testing.B) {
		for i := range b.N {
			s := svcs[i%len(svcs)]
			s.Backends = s.Backends[:2+i%2]
			next := append(svcs[:0:0], svcs...)
			next[i%len(svcs)] = s
			if _, err := m.Apply(ctx, next); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unchanged", func(b *testing.B) {
		for range b.N {
			if _, err := m.Apply(ctx, svcs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("remove", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			if _, err := m.Apply(ctx, svcs); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := m.Apply(ctx, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
