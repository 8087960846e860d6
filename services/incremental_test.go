package services

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// randomService is one of a small universe of services whose shapes cover
// what the planner distinguishes: several ports, node ports, external IPs,
// both traffic policies, affinity, Maglev, per-backend ports, terminating
// and serving backends, local ones, and backends shared between services.
func randomService(r *rand.Rand, i int) Service {
	s := Service{
		Namespace: "inc",
		Name:      fmt.Sprintf("s%d", i),
		ClusterIP: netip.AddrFrom4([4]byte{10, 96, 0, byte(1 + i)}),
		Ports:     []Port{{Name: "a", Port: 80, TargetPort: 8080}},
	}
	if r.IntN(3) == 0 {
		s.Ports = append(s.Ports, Port{Name: "b", Protocol: ProtocolUDP, Port: 53, TargetPort: 5353})
	}
	switch r.IntN(4) {
	case 0:
		s.Type = TypeNodePort
		s.ExplicitNodePorts = true
		for j := range s.Ports {
			s.Ports[j].NodePort = int32(30000 + 10*i + j)
		}
		if r.IntN(2) == 0 {
			s.ExternalTrafficPolicy = TrafficPolicyLocal
		}
	case 1:
		s.ExternalIPs = []netip.Addr{netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i)})}
	}
	if r.IntN(4) == 0 {
		s.InternalTrafficPolicy = TrafficPolicyLocal
	}
	if r.IntN(4) == 0 {
		s.SessionAffinity, s.AffinityTimeout = AffinityClientIP, 30
	}
	if r.IntN(4) == 0 {
		s.Algorithm = AlgorithmMaglev
	}
	for b := range r.IntN(6) {
		// A small address pool, so services share backends.
		be := Backend{IP: netip.AddrFrom4([4]byte{10, 1, 0, byte(1 + (i+b*3)%12)})}
		switch r.IntN(5) {
		case 0:
			be.Terminating, be.Serving = true, r.IntN(2) == 0
		case 1:
			be.Ready = false
		default:
			be.Ready = true
		}
		be.Local = r.IntN(2) == 0
		if r.IntN(5) == 0 {
			be.Ports = make([]int32, len(s.Ports))
			for j := range be.Ports {
				be.Ports[j] = int32(r.IntN(2) * (9000 + j))
			}
		}
		if !slices.ContainsFunc(s.Backends, func(x Backend) bool { return x.IP == be.IP }) {
			s.Backends = append(s.Backends, be)
		}
	}
	return s
}

// Incremental updates leave the maps exactly as a whole update of the
// resulting set would: after each random batch of changes through Update,
// Apply of the whole set finds nothing to write, a full Reconcile rewrites
// the maps without changing one entry, and a manager opened afresh (state
// file plus journal) agrees too.
func TestUpdateMatchesWholeApply(t *testing.T) {
	node := newTestNode(t)
	m := node.open(t)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	const universe = 24
	cur := map[string]Service{}
	for step := range 60 {
		var ups []Service
		var removes []string
		for range 1 + r.IntN(4) {
			i := r.IntN(universe)
			if r.IntN(4) == 0 {
				removes = append(removes, fmt.Sprintf("inc/s%d", i))
				continue
			}
			ups = append(ups, randomService(r, i))
		}
		// One service changed twice in a batch is refused whole; keep the
		// batches to one change per service.
		seen := map[string]bool{}
		ups = slices.DeleteFunc(ups, func(s Service) bool { d := seen[s.Key()]; seen[s.Key()] = true; return d })
		removes = slices.DeleteFunc(removes, func(k string) bool { d := seen[k]; seen[k] = true; return d })

		if _, err := m.Update(ctx, ups, removes); err != nil {
			t.Fatalf("step %d: Update: %v", step, err)
		}
		for _, k := range removes {
			delete(cur, k)
		}
		for _, s := range ups {
			cur[s.Key()] = s
		}
		whole := make([]Service, 0, len(cur))
		for _, s := range cur {
			whole = append(whole, s)
		}

		before := m.dump(t)
		writes := m.countWrites()
		sum, err := m.Apply(ctx, whole)
		if err != nil {
			t.Fatalf("step %d: Apply: %v", step, err)
		}
		if sum.MapWrites != 0 || writes.total() != 0 || len(sum.Added)+len(sum.Updated)+len(sum.Removed) != 0 {
			t.Fatalf("step %d: the whole update still had work after the incremental one: %+v, writes %v", step, sum, writes)
		}
		if _, err := m.Reconcile(ctx, whole); err != nil {
			t.Fatalf("step %d: Reconcile: %v", step, err)
		}
		after := m.dump(t)
		after.Maglev, before.Maglev = nil, nil // tables are rebuilt whole by a resync
		if d := diffDumps(before, after); d != "" {
			t.Fatalf("step %d: the maps differ from what the state says:\n%s", step, d)
		}
		// Incremental again, then a fresh manager reads state + journal.
		if step%10 == 9 {
			fresh := node.open(t)
			sum, err := fresh.Apply(ctx, whole)
			if err != nil || sum.MapWrites != 0 {
				t.Fatalf("step %d: a fresh manager disagrees: %+v %v", step, sum, err)
			}
		}
	}
}

// Update refuses what a whole update would: a frontend another service
// holds, and an invalid service, changing nothing.
func TestUpdateRefuses(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	a := clusterIP("a", "10.96.0.1", "10.1.0.1")
	if _, err := m.Update(ctx, []Service{a}, nil); err != nil {
		t.Fatal(err)
	}
	before := m.dump(t)
	clash := clusterIP("b", "10.96.0.1", "10.1.0.2")
	_, err := m.Update(ctx, []Service{clash}, nil)
	var verr *ValidationError
	if !errors.As(err, &verr) || len(verr.Errors) != 1 || verr.Errors[0].Other != "test/a" {
		t.Fatalf("a clash: %v", err)
	}
	bad := clusterIP("c", "10.96.0.3", "10.1.0.3")
	bad.Ports[0].Port = 0
	if _, err := m.Update(ctx, []Service{bad}, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an invalid service: %v", err)
	}
	if d := diffDumps(before, m.dump(t)); d != "" {
		t.Fatalf("refused updates changed the maps:\n%s", d)
	}
	// The clash is fine once its owner goes in the same update.
	if _, err := m.Update(ctx, []Service{clash}, []string{"test/a"}); err != nil {
		t.Fatalf("take over a removed service's frontend: %v", err)
	}
	list, _ := m.List()
	if len(list) != 1 || list[0].Key() != "test/b" {
		t.Fatalf("services: %v", list)
	}
}

// BenchmarkUpdateOne10k is one service's change among 10,000, through
// Update: the work a Kubernetes agent does per EndpointSlice change.
//
//	go test -run '^$' -bench UpdateOne10k ./services/
func BenchmarkUpdateOne10k(b *testing.B) {
	m := newTestManager(b)
	ctx := context.Background()
	svcs := manyServices(10000)
	if _, err := m.Apply(ctx, svcs); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		s := svcs[i%len(svcs)]
		s.Backends = s.Backends[:2+i%2]
		if _, err := m.Update(ctx, []Service{s}, nil); err != nil {
			b.Fatal(err)
		}
	}
}
