package services

import (
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Verbose() {
		// The loader logs every datapath it loads; tests load many.
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}
	os.Exit(m.Run())
}

// needRoot skips tests that load BPF maps when not root.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF maps")
	}
}

var pinSeq atomic.Int32

// testNode is a datapath loaded under a pin root and state directory of
// its own, attached nowhere: the maps are real, no traffic reaches them.
type testNode struct {
	cfg loader.Config
}

func newTestNode(t testing.TB, sizes ...func(*loader.Config)) *testNode {
	t.Helper()
	needRoot(t)
	name := regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-")
	if len(name) > 40 {
		name = name[:40]
	}
	cfg := loader.Config{
		PinRoot:  filepath.Join(loader.BPFFSMount, fmt.Sprintf("podpath-svctest-%d-%d-%s", os.Getpid(), pinSeq.Add(1), name)),
		StateDir: t.TempDir(),
		PodCIDR:  netip.MustParsePrefix("10.99.0.0/24"),
	}
	for _, f := range sizes {
		f(&cfg)
	}
	t.Cleanup(func() { os.RemoveAll(cfg.PinRoot) })
	if err := loader.Init(cfg); err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	return &testNode{cfg: cfg}
}

func (n *testNode) open(t testing.TB, opts ...Option) *Manager {
	t.Helper()
	m, err := Open(n.cfg.PinRoot, n.cfg.StateDir, opts...)
	if err != nil {
		t.Fatalf("open manager: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func newTestManager(t testing.TB, opts ...Option) *Manager {
	t.Helper()
	return newTestNode(t).open(t, opts...)
}

// writeCounter counts map writes and deletes by map name.
type writeCounter map[string]int

func (w writeCounter) total() int {
	n := 0
	for _, v := range w {
		n += v
	}
	return n
}

func (m *Manager) countWrites() writeCounter {
	w := writeCounter{}
	m.dp.onWrite = func(name string, n int) { w[name] += n }
	return w
}

// dump is every service map's contents, in a form that compares with ==
// per entry: Maglev tables by the inner map's id, so a swap shows.
type dump struct {
	Services map[maps.SvcKey]maps.SvcInfo
	Slots    map[maps.SlotKey]uint32
	Backends map[uint32]maps.Backend
	Maglev   map[uint32]uint32 // frontend id -> inner map id
	Affinity map[maps.AffinityKey]maps.AffinityValue
	CT       map[maps.CtKey]maps.CtEntry
}

func dumpMap[K comparable, V any](t testing.TB, m *ebpf.Map) map[K]V {
	t.Helper()
	out, err := maps.Entries[K, V](m)
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	return out
}

func (m *Manager) dump(t testing.TB) dump {
	t.Helper()
	return dump{
		Services: dumpMap[maps.SvcKey, maps.SvcInfo](t, m.dp.services),
		Slots:    dumpMap[maps.SlotKey, uint32](t, m.dp.slots),
		Backends: dumpMap[uint32, maps.Backend](t, m.dp.backends),
		Maglev:   dumpMap[uint32, uint32](t, m.dp.maglev),
		Affinity: dumpMap[maps.AffinityKey, maps.AffinityValue](t, m.dp.affinity),
		CT:       dumpMap[maps.CtKey, maps.CtEntry](t, m.dp.conntrack),
	}
}

// diffDumps describes how two dumps differ, "" when they are equal.
func diffDumps(a, b dump) string {
	var out []string
	out = append(out, diffMap("services", a.Services, b.Services)...)
	out = append(out, diffMap("svc_slots", a.Slots, b.Slots)...)
	out = append(out, diffMap("backends", a.Backends, b.Backends)...)
	out = append(out, diffMap("maglev", a.Maglev, b.Maglev)...)
	out = append(out, diffMap("affinity", a.Affinity, b.Affinity)...)
	out = append(out, diffMap("conntrack", a.CT, b.CT)...)
	slices.Sort(out)
	return strings.Join(out, "\n")
}

func diffMap[K, V comparable](name string, a, b map[K]V) []string {
	var out []string
	for k, v := range a {
		w, ok := b[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s: %+v deleted", name, k))
		case v != w:
			out = append(out, fmt.Sprintf("%s: %+v changed %+v -> %+v", name, k, v, w))
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			out = append(out, fmt.Sprintf("%s: %+v added %+v", name, k, v))
		}
	}
	return out
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func ready(ips ...string) []Backend {
	out := make([]Backend, len(ips))
	for i, ip := range ips {
		out[i] = Backend{IP: addr(ip), Ready: true}
	}
	return out
}

// clusterIP is a one-port ClusterIP service vip:80 -> backends:8080.
func clusterIP(name, vip string, backends ...string) Service {
	return Service{
		Namespace: "test",
		Name:      name,
		ClusterIP: addr(vip),
		Ports:     []Port{{Port: 80, TargetPort: 8080}},
		Backends:  ready(backends...),
	}
}

func svcKey(vip string, port uint16, proto uint8, scope maps.SvcScope) maps.SvcKey {
	return feKey{toIP16(addr(vip)), port, proto, scope}.mapKey()
}

func slotKey(id, slot uint32) maps.SlotKey { return maps.SlotKey{SvcId: id, Slot: slot} }
