package maps_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// node is a datapath pinned under a throwaway root on bpffs.
type node struct {
	root string
	cfg  loader.Config
}

func newNode(t *testing.T) *node {
	t.Helper()
	root, err := os.MkdirTemp(loader.BPFFSMount, "podpath-test-")
	if err != nil {
		t.Fatalf("pin root on bpffs: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	return &node{root: root, cfg: loader.Config{
		PinRoot:  root,
		StateDir: t.TempDir(),
		PodCIDR:  netip.MustParsePrefix("10.244.1.0/24"),
	}}
}

// init runs loader.Init in a private network namespace: Init replaces every
// podpath program attached in its namespace, and a test must not touch the
// host's (pins live on bpffs and are not per namespace).
func (n *node) init() error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("new network namespace: %w", err)
			return
		}
		errc <- loader.Init(n.cfg)
	}()
	return <-errc
}

func (n *node) mustInit(t *testing.T) {
	t.Helper()
	if err := n.init(); err != nil {
		t.Fatalf("loader.Init: %v", err)
	}
}

func (n *node) openMap(t *testing.T, name string) *ebpf.Map {
	t.Helper()
	m, err := maps.OpenPinned(n.root, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func mapID(t *testing.T, m *ebpf.Map) ebpf.MapID {
	t.Helper()
	id, ok := mapInfo(t, m).ID()
	if !ok {
		t.Fatal("kernel reports no map ID")
	}
	return id
}

func mapSpec(t *testing.T, name string) *ebpf.MapSpec {
	t.Helper()
	specs, err := maps.Specs()
	if err != nil {
		t.Fatal(err)
	}
	ms, ok := specs[maps.ProgFromPod].Maps[name]
	if !ok {
		t.Fatalf("no map %s in %s", name, maps.ProgFromPod)
	}
	return ms
}

// changed returns a copy of a struct type edited by f; its size stays, so
// only BTF can tell the difference.
func changed(t *testing.T, typ btf.Type, f func(s *btf.Struct)) *btf.Struct {
	t.Helper()
	s, ok := btf.UnderlyingType(btf.Copy(typ)).(*btf.Struct)
	if !ok {
		t.Fatalf("%v is not a struct", typ)
	}
	f(s)
	return s
}

func member(t *testing.T, s *btf.Struct, name string) *btf.Member {
	t.Helper()
	for i := range s.Members {
		if s.Members[i].Name == name {
			return &s.Members[i]
		}
	}
	t.Fatalf("struct %s has no member %s", s.Name, name)
	return nil
}

// CheckLayout accepts a map built from this build's own spec and refuses
// one whose key or value reads differently, although the sizes agree.
func TestCheckLayout(t *testing.T) {
	rename := func(from, to string) func(*testing.T, *btf.Struct) {
		return func(t *testing.T, s *btf.Struct) { member(t, s, from).Name = to }
	}
	swap := func(a, b string) func(*testing.T, *btf.Struct) {
		return func(t *testing.T, s *btf.Struct) {
			ma, mb := member(t, s, a), member(t, s, b)
			ma.Name, mb.Name = mb.Name, ma.Name
		}
	}
	tests := []struct {
		name    string
		mapName string
		key     func(*testing.T, *btf.Struct) // nil: unchanged
		value   func(*testing.T, *btf.Struct)
		wantOK  bool
		claimed bool // accepted although the layouts differ
	}{
		{name: "endpoints as built", mapName: maps.MapEndpoints, wantOK: true},
		{name: "counters as built", mapName: maps.MapCounters, wantOK: true},
		{name: "endpoint value member renamed", mapName: maps.MapEndpoints, value: rename("network", "mtu")},
		// Maps pinned before endpoint_info.network had a name.
		{name: "endpoint reserved member claimed", mapName: maps.MapEndpoints, value: rename("network", "reserved"), wantOK: true, claimed: true},
		{name: "endpoint reserved member claimed, another renamed", mapName: maps.MapEndpoints, value: func(t *testing.T, s *btf.Struct) {
			member(t, s, "network").Name = "reserved"
			member(t, s, "flags").Name = "flag"
		}},
		{name: "endpoint ifindex and flags swapped", mapName: maps.MapEndpoints, value: swap("ifindex", "flags")},
		{name: "endpoint mac and node_mac swapped", mapName: maps.MapEndpoints, value: swap("mac", "node_mac")},
		{name: "endpoint key member renamed", mapName: maps.MapEndpoints, key: rename("family", "af")},
		{name: "counter packets and bytes swapped", mapName: maps.MapCounters, value: swap("packets", "bytes")},
		{name: "counter key reason and hook moved", mapName: maps.MapCounters, key: func(t *testing.T, s *btf.Struct) {
			// hook u8 at byte 0, pad at 1, reason u16 at 2: still 4 bytes.
			hook, pad, reason := *member(t, s, "hook"), *member(t, s, "pad"), *member(t, s, "reason")
			hook.Offset, pad.Offset, reason.Offset = 0, 8, 16
			s.Members = []btf.Member{hook, pad, reason}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := mapSpec(t, tc.mapName)
			pinned := spec.Copy()
			pinned.Pinning = ebpf.PinNone
			if tc.key != nil {
				pinned.Key = changed(t, spec.Key, func(s *btf.Struct) { tc.key(t, s) })
			}
			if tc.value != nil {
				pinned.Value = changed(t, spec.Value, func(s *btf.Struct) { tc.value(t, s) })
			}
			m, err := ebpf.NewMap(pinned)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()

			err = maps.CheckLayout(spec, m)
			if tc.wantOK {
				if err != nil {
					t.Fatalf("CheckLayout refused this build's own layout: %v", err)
				}
				if have, err := maps.PinnedLayout(m); err != nil || (have != maps.SpecLayout(spec)) != tc.claimed {
					t.Fatalf("PinnedLayout = %q, %v; want %q", have, err, maps.SpecLayout(spec))
				}
				return
			}
			if !errors.Is(err, maps.ErrLayoutChanged) {
				t.Fatalf("CheckLayout = %v, want an error wrapping ErrLayoutChanged", err)
			}
		})
	}
}

// A pinned map whose layout changed is refused by loader.Init, which then
// leaves it, its contents and the rest of the root alone: the operator
// decides (node reset), not the loader.
func TestInitRefusesChangedLayout(t *testing.T) {
	n := newNode(t)
	spec := mapSpec(t, maps.MapEndpoints)
	old := spec.Copy()
	old.MaxEntries = loader.DefaultMaxEndpoints // as the loader sizes it: only the layout differs
	old.Value = changed(t, spec.Value, func(s *btf.Struct) { member(t, s, "network").Name = "mtu" })
	m, err := ebpf.NewMapWithOptions(old, ebpf.MapOptions{PinPath: n.root})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ip := netip.MustParseAddr("10.244.1.10")
	entry := maps.EndpointInfo{Ifindex: 10, Flags: 0, Network: 1500, NetnsCookie: 0xc00c1e}
	if err := maps.NewEndpoints(m).Put(ip, entry); err != nil {
		t.Fatal(err)
	}
	id := mapID(t, m)

	err = n.init()
	if !errors.Is(err, maps.ErrLayoutChanged) {
		t.Fatalf("loader.Init over a changed layout = %v, want an error wrapping ErrLayoutChanged", err)
	}
	t.Logf("refused as expected: %v", err)

	pinned := n.openMap(t, maps.MapEndpoints)
	if got := mapID(t, pinned); got != id {
		t.Errorf("pinned endpoints map is now map %d, want the original %d", got, id)
	}
	got, ok, err := maps.NewEndpoints(pinned).Lookup(ip)
	if err != nil || !ok || got != entry {
		t.Errorf("entry after refusal: %+v, %v, %v; want %+v intact", got, ok, err, entry)
	}
	for _, pin := range []string{maps.MapPath(n.root, maps.MapCounters), maps.ProgPath(n.root, maps.ProgFromPod)} {
		if _, err := os.Stat(pin); !os.IsNotExist(err) {
			t.Errorf("%s exists after a refused Init (stat: %v)", pin, err)
		}
	}
}

// Running loader.Init again (an upgrade, a restart) replaces the programs and
// keeps the maps: the same kernel objects with the same contents, used by
// the new programs.
func TestInitKeepsMapContents(t *testing.T) {
	n := newNode(t)
	n.mustInit(t)

	eps := n.openMap(t, maps.MapEndpoints)
	ctrs := n.openMap(t, maps.MapCounters)
	ip := netip.MustParseAddr("10.244.1.10")
	entry := maps.EndpointInfo{Ifindex: 10, Mac: [6]uint8{2, 0, 0, 0, 0, 0x0a}, NodeMac: [6]uint8{0xee, 0xee, 0, 0, 0, 0x0a}, NetnsCookie: 42}
	if err := maps.NewEndpoints(eps).Put(ip, entry); err != nil {
		t.Fatal(err)
	}
	runPinnedFromPod(t, n.root)
	firstProg := progID(t, n.root)
	epsID, ctrsID := mapID(t, eps), mapID(t, ctrs)

	n.mustInit(t)

	if got := mapID(t, n.openMap(t, maps.MapEndpoints)); got != epsID {
		t.Errorf("endpoints map replaced: map %d, was %d", got, epsID)
	}
	if got := mapID(t, n.openMap(t, maps.MapCounters)); got != ctrsID {
		t.Errorf("counters map replaced: map %d, was %d", got, ctrsID)
	}
	if got, ok, err := maps.NewEndpoints(eps).Lookup(ip); err != nil || !ok || got != entry {
		t.Errorf("endpoint after re-init: %+v, %v, %v; want %+v", got, ok, err, entry)
	}
	if progID(t, n.root) == firstProg {
		t.Errorf("from_pod was not reloaded by the second Init")
	}
	// The new program counts into the old counters map.
	runPinnedFromPod(t, n.root)
	cs, err := maps.ReadCounters(ctrs)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].Reason.String() != "drop_unsupported_l3" || cs[0].Packets != 2 {
		t.Errorf("counters after a packet through each program version: %+v, want 2 drop_unsupported_l3", cs)
	}
}

// runPinnedFromPod sends one 60-byte LLDP frame through the pinned from_pod,
// which drops it as drop_unsupported_l3.
func runPinnedFromPod(t *testing.T, root string) {
	t.Helper()
	prog, err := loader.LoadPinnedProgram(root, maps.ProgFromPod)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	frame := make([]byte, 60)
	frame[12], frame[13] = 0x88, 0xcc
	if ret, _, err := prog.Test(frame); err != nil || ret != 2 {
		t.Fatalf("run pinned from_pod: verdict %d, %v; want TC_ACT_SHOT (2)", ret, err)
	}
}

func progID(t *testing.T, root string) ebpf.ProgramID {
	t.Helper()
	prog, err := loader.LoadPinnedProgram(root, maps.ProgFromPod)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}
