package maps_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
)

func newNetworks(t *testing.T) *maps.Networks {
	t.Helper()
	open := func(name string) *ebpf.Map {
		spec := mapSpec(t, name).Copy()
		spec.Pinning = ebpf.PinNone
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	return maps.NewNetworks(open(maps.MapNetworks), open(maps.MapNetworkReach))
}

// Ids come from names alone, fit a VNI and are never 0 (no network).
func TestNetworkID(t *testing.T) {
	seen := map[uint32]string{}
	for i := range 2000 {
		name := fmt.Sprintf("net-%d", i)
		id := maps.NetworkID(name)
		if id < maps.NetworkVNIBase || id > 0xffffff {
			t.Fatalf("NetworkID(%q) = %#x, want %#x..0xffffff", name, id, maps.NetworkVNIBase)
		}
		if id != maps.NetworkID(name) {
			t.Fatalf("NetworkID(%q) is not stable", name)
		}
		seen[id] = name
	}
	if len(seen) < 1990 {
		t.Errorf("2000 names gave only %d ids", len(seen))
	}
}

// Put records a network and replaces what it reached before; List names
// the networks reached; Delete takes the network and its reaches.
func TestNetworksPutListDelete(t *testing.T) {
	n := newNetworks(t)
	mustPut := func(name string, reaches ...string) {
		t.Helper()
		id, err := n.Put(name, reaches)
		if err != nil {
			t.Fatal(err)
		}
		if id != maps.NetworkID(name) {
			t.Fatalf("Put(%q) = id %d, want %d", name, id, maps.NetworkID(name))
		}
	}
	expect := func(want ...maps.Network) {
		t.Helper()
		got, err := n.List()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(got, want, func(a, b maps.Network) bool {
			return a.ID == b.ID && a.Name == b.Name && a.ReachesAll == b.ReachesAll && slices.Equal(a.Reaches, b.Reaches)
		}) {
			t.Fatalf("networks:\n got %+v\nwant %+v", got, want)
		}
	}
	nw := func(name string, all bool, reaches ...string) maps.Network {
		return maps.Network{ID: maps.NetworkID(name), Name: name, ReachesAll: all, Reaches: reaches}
	}
	mustPut("blue")
	mustPut("red", "blue", "elsewhere", "red")
	expect(nw("blue", false), nw("red", false, "#"+fmt.Sprint(maps.NetworkID("elsewhere")), "blue"))

	mustPut("red", maps.ReachAll, "green")
	mustPut("green", "blue")
	expect(nw("blue", false), nw("green", false, "blue"), nw("red", true, "*", "green"))

	if err := n.Delete("red"); err != nil {
		t.Fatal(err)
	}
	if err := n.Delete("red"); err != nil {
		t.Fatalf("deleting a network twice: %v", err)
	}
	expect(nw("blue", false), nw("green", false, "blue"))

	if _, err := n.Put(string(make([]byte, 60)), nil); err == nil {
		t.Error("a 60-byte name was accepted")
	}
}

// Two names with one id cannot both be networks of a node: the second is
// refused, naming both, and the first keeps its entry.
func TestNetworkIDTaken(t *testing.T) {
	byID := map[uint32]string{}
	var a, b string
	for i := 0; a == ""; i++ {
		name := fmt.Sprintf("n%d", i)
		id := maps.NetworkID(name)
		if other, ok := byID[id]; ok {
			a, b = other, name
		}
		byID[id] = name
	}
	n := newNetworks(t)
	if _, err := n.Put(a, nil); err != nil {
		t.Fatal(err)
	}
	_, err := n.Put(b, nil)
	if !errors.Is(err, maps.ErrNetworkIDTaken) {
		t.Fatalf("Put(%q) over %q (id %d) = %v, want ErrNetworkIDTaken", b, a, maps.NetworkID(a), err)
	}
	t.Logf("refused: %v", err)
	list, err := n.List()
	if err != nil || len(list) != 1 || list[0].Name != a {
		t.Fatalf("networks after the refusal: %+v, %v; want only %q", list, err, a)
	}
}
