package main

import (
	"net/netip"
	"testing"
	"time"
)

// The measured services sit where the tables say: last, and with three
// or more also at index n/2; every ClusterIP is distinct and inside the
// service CIDR kube-proxy's nftables rules are given.
func TestBenchServicesLayout(t *testing.T) {
	backend := netip.MustParseAddr("172.17.0.3")
	for _, n := range []int{1, 2, 3, 1000, 100000} {
		defs := benchServices(n, backend)
		if len(defs) != n {
			t.Fatalf("%d services: got %d", n, len(defs))
		}
		if d := defs[n-1]; d.name != measuredName || d.vip != measuredVIP || len(d.endpoints) != 1 || d.endpoints[0] != backend {
			t.Errorf("%d services: last is %+v, want %s", n, d, measuredName)
		}
		mids := 0
		seen := map[netip.Addr]bool{}
		for i, d := range defs {
			if seen[d.vip] {
				t.Fatalf("%d services: ClusterIP %s twice", n, d.vip)
			}
			seen[d.vip] = true
			if !kpServiceCIDR.Contains(d.vip) {
				t.Errorf("%d services: %s outside %s", n, d.vip, kpServiceCIDR)
			}
			if d.name == measuredMidName {
				mids++
				if i != n/2 || d.vip != measuredMidVIP || len(d.endpoints) != 1 || d.endpoints[0] != backend {
					t.Errorf("%d services: %s at %d (%+v), want index %d", n, measuredMidName, i, d, n/2)
				}
			} else if d.name != measuredName && len(d.endpoints) != fillerBackends {
				t.Errorf("%d services: filler %s has %d endpoints", n, d.name, len(d.endpoints))
			}
		}
		if want := len(svcPositions(n)) - 1; mids != want {
			t.Errorf("%d services: %d %s, want %d", n, mids, measuredMidName, want)
		}
	}
}

// A contender whose programming time grows with the square of the count
// is foreseen past the limit; too few or unusable points foresee nothing.
func TestForeseen(t *testing.T) {
	if d, ok := foreseen([][2]float64{{1000, 0.1}, {10000, 10}}, 100000); !ok || d < 999*time.Second || d > 1001*time.Second {
		t.Errorf("quadratic: %v %v, want 1000 s", d, ok)
	}
	// Sub-linear growth is taken as linear.
	if d, ok := foreseen([][2]float64{{1, 0.002}, {1000, 0.015}}, 10000); !ok || d != 150*time.Millisecond {
		t.Errorf("linear floor: %v %v, want 150ms", d, ok)
	}
	for _, pairs := range [][][2]float64{nil, {{1000, 1}}, {{1000, 0}, {10000, 1}}, {{1000, 1}, {1000, 2}}} {
		if _, ok := foreseen(pairs, 100000); ok {
			t.Errorf("%v: foreseen", pairs)
		}
	}
}
