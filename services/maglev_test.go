package services

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func maglevBackends(n int) []maglevBackend {
	bs := make([]maglevBackend, n)
	for i := range bs {
		bs[i] = maglevBackend{
			ID:   uint32(100 + i),
			Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 8080),
		}
	}
	return bs
}

// Every slot holds one of the backends, and each backend holds floor(M/N)
// or ceil(M/N) slots: the backends take turns filling the table, so the
// spread is as even as a table of M slots allows (tolerance: 1 slot).
func TestMaglevTableBalanced(t *testing.T) {
	for _, m := range []uint32{251, 16381, 65521} {
		for _, n := range []int{1, 2, 3, 10, 50, 100} {
			bs := maglevBackends(n)
			table := maglevTable(bs, m)
			if len(table) != int(m) {
				t.Fatalf("M=%d N=%d: table has %d slots", m, n, len(table))
			}
			count := map[uint32]int{}
			for i, id := range table {
				if !slices.ContainsFunc(bs, func(b maglevBackend) bool { return b.ID == id }) {
					t.Fatalf("M=%d N=%d: slot %d holds %d, not a backend", m, n, i, id)
				}
				count[id]++
			}
			lo, hi := int(m)/n, (int(m)+n-1)/n
			for _, b := range bs {
				if c := count[b.ID]; c < lo || c > hi {
					t.Errorf("M=%d N=%d: backend %s has %d slots, want %d..%d", m, n, b.Addr, c, lo, hi)
				}
			}
		}
	}
}

// The table depends on the set of backends, not on their order, and is
// the same every time (every node builds the same one).
func TestMaglevTableDeterministic(t *testing.T) {
	bs := maglevBackends(20)
	a := maglevTable(bs, 16381)
	rev := slices.Clone(bs)
	slices.Reverse(rev)
	if !slices.Equal(a, maglevTable(rev, 16381)) {
		t.Fatal("table depends on the backends' order")
	}
	if !slices.Equal(a, maglevTable(bs, 16381)) {
		t.Fatal("table differs between builds")
	}
}

// Removing one of N backends moves the flows of the removed backend (they
// must move) and few others: of a million flow hashes looked up as the
// datapath does (hash % M), at most 1.2/N of all flows change backend
// besides the removed backend's own. Measured with M = 16381: N=10 moves
// about 0.1/N, N=50 about 0.56/N in the worst case over every backend.
func TestMaglevRemovalDisruption(t *testing.T) {
	const m = 16381
	rng := rand.New(rand.NewPCG(1, 2))
	hashes := make([]uint32, 1_000_000)
	for i := range hashes {
		hashes[i] = rng.Uint32()
	}
	for _, n := range []int{10, 50} {
		bs := maglevBackends(n)
		before := maglevTable(bs, m)
		worst := 0.0
		for r := range bs {
			rest := slices.Delete(slices.Clone(bs), r, r+1)
			after := maglevTable(rest, m)
			moved, own := 0, 0
			for _, h := range hashes {
				was, is := before[h%m], after[h%m]
				switch {
				case was == bs[r].ID:
					own++
				case was != is:
					moved++
				}
			}
			frac := float64(moved) / float64(len(hashes))
			worst = max(worst, frac)
			if bound := 1.2 / float64(n); frac > bound {
				t.Errorf("N=%d, removing %s: %.4f of flows moved besides its own %.4f, want <= 1.2/N = %.4f",
					n, bs[r].Addr, frac, float64(own)/float64(len(hashes)), bound)
			}
		}
		t.Logf("N=%d: worst case %.4f of flows moved besides the removed backend's (%.2f/N)", n, worst, worst*float64(n))
	}
}

// Adding a backend takes about 1/(N+1) of the flows, nearly all of them to
// the new backend.
func TestMaglevAdditionDisruption(t *testing.T) {
	const m = 16381
	for _, n := range []int{10, 50} {
		bs := maglevBackends(n + 1)
		before := maglevTable(bs[:n], m)
		after := maglevTable(bs, m)
		toNew, other := 0, 0
		for i := range before {
			switch {
			case after[i] == bs[n].ID:
				toNew++
			case after[i] != before[i]:
				other++
			}
		}
		if frac := float64(other) / m; frac > 1.2/float64(n) {
			t.Errorf("N=%d+1: %.4f of slots moved between old backends, want <= 1.2/N", n, frac)
		}
		if lo := m / (n + 1); toNew < lo {
			t.Errorf("N=%d+1: new backend got %d slots, want >= %d", n, toNew, lo)
		}
	}
}
