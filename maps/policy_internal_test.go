package maps

import (
	"math/rand/v2"
	"testing"
)

// portPrefixes covers exactly first..last, with blocks aligned to their
// size, in at most 30 prefixes.
func TestPortPrefixes(t *testing.T) {
	check := func(first, last uint16) {
		t.Helper()
		ps := portPrefixes(first, last)
		if len(ps) > 30 {
			t.Fatalf("%d-%d: %d prefixes", first, last, len(ps))
		}
		next := uint32(first)
		for _, p := range ps {
			size := uint32(1) << (16 - p.bits)
			if uint32(p.first) != next || uint32(p.first)%size != 0 {
				t.Fatalf("%d-%d: prefix %d/%d after %d: %v", first, last, p.first, p.bits, next, ps)
			}
			next += size
		}
		if next != uint32(last)+1 {
			t.Fatalf("%d-%d: prefixes end at %d: %v", first, last, next-1, ps)
		}
	}
	for _, r := range [][2]uint16{{1, 1}, {80, 80}, {1, 65535}, {0, 65535}, {8000, 8100}, {1024, 2047}, {65535, 65535}, {32768, 65535}, {2, 65534}} {
		check(r[0], r[1])
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		a, b := uint16(rng.IntN(65536)), uint16(rng.IntN(65536))
		if a > b {
			a, b = b, a
		}
		check(a, b)
	}
	if got := len(portPrefixes(1, 65535)); got != 16 {
		t.Errorf("1-65535: %d prefixes, want 16", got)
	}
}
