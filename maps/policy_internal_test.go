package maps

import (
	"math/rand/v2"
	"net/netip"
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

// A rule's keys read back (PolicyKey.Rule) as prefixes that tile its
// port range exactly.
func TestPolicyKeysReadBack(t *testing.T) {
	ep := netip.MustParseAddr("10.0.0.1")
	for _, r := range [][2]uint16{{80, 80}, {8000, 8100}, {1, 65535}, {1024, 2047}} {
		rule := PolicyRule{Endpoint: ep, Direction: PolicyIngress, Identity: 300, Proto: 6, PortFirst: r[0], PortLast: r[1]}
		keys, err := rule.Keys()
		if err != nil {
			t.Fatal(err)
		}
		next := uint32(r[0])
		for _, k := range keys {
			back := k.Rule()
			if back.Endpoint != ep || back.Identity != 300 || back.Proto != 6 || uint32(back.PortFirst) != next {
				t.Fatalf("%v: key read back as %s, want ports from %d", r, back, next)
			}
			next = uint32(back.PortLast) + 1
		}
		if next != uint32(r[1])+1 {
			t.Errorf("%v: keys end at %d", r, next-1)
		}
	}
	any, _ := PolicyRule{Endpoint: ep, Direction: PolicyEgress, Identity: IdentityAny}.Keys()
	if back := any[0].Rule(); back.Proto != 0 || back.PortFirst != 0 || back.Direction != PolicyEgress {
		t.Errorf("every protocol read back as %s", back)
	}
}
