package services

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// ctFlow writes both directions of a flow from client:sport through the
// frontend of web to backend ip:8080, as the datapath would.
func ctFlow(t *testing.T, m *Manager, client string, sport uint16, frontendID uint32, backend string, expires uint64) (fwd, rev maps.CtKey) {
	t.Helper()
	bid := m.backendID(t, backend, 8080)
	fwd = maps.CtKey{Saddr: maps.Addr16(addr(client)), Daddr: maps.Addr16(addr("10.96.0.10")),
		Sport: maps.Port(sport), Dport: maps.Port(80), Proto: unix.IPPROTO_TCP, Family: maps.FamilyIPv4}
	rev = maps.CtKey{Saddr: maps.Addr16(addr(backend)), Daddr: maps.Addr16(addr(client)),
		Sport: maps.Port(8080), Dport: maps.Port(sport), Proto: unix.IPPROTO_TCP, Family: maps.FamilyIPv4}
	fe := maps.CtEntry{Expires: expires, Packets: 4, Bytes: 300, SvcId: frontendID, BackendId: bid, TcpFlags: 0x12}
	re := maps.CtEntry{Expires: expires, Packets: 3, Bytes: 200, SvcId: frontendID, BackendId: bid, TcpFlags: 0x12,
		Flags: maps.CtFlagReply, NatAddr: maps.Addr16(addr("10.96.0.10")), NatPort: maps.Port(80)}
	must(t, m.dp.conntrack.Update(&fwd, &fe, ebpf.UpdateAny))
	must(t, m.dp.conntrack.Update(&rev, &re, ebpf.UpdateAny))
	return fwd, rev
}

func TestConntrackListFlushReap(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	web := clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.2")
	db := clusterIP("db", "10.96.0.20", "10.0.0.3")
	if _, err := m.Apply(ctx, []Service{web, db}); err != nil {
		t.Fatal(err)
	}
	webInfo, _ := m.frontendOf(t, svcKey("10.96.0.10", 80, unix.IPPROTO_TCP, maps.ScopeInternal))
	dbInfo, _ := m.frontendOf(t, svcKey("10.96.0.20", 80, unix.IPPROTO_TCP, maps.ScopeInternal))
	now, err := monotonicNow()
	must(t, err)
	ctFlow(t, m, "10.99.0.5", 40001, webInfo.Id, "10.0.0.1", now+uint64(time.Minute))
	ctFlow(t, m, "10.99.0.5", 40002, webInfo.Id, "10.0.0.2", now+uint64(time.Minute))
	oldFwd, oldRev := ctFlow(t, m, "10.99.0.6", 40003, webInfo.Id, "10.0.0.2", now-uint64(time.Second))
	ctFlow(t, m, "10.99.0.7", 40004, dbInfo.Id, "10.0.0.3", now+uint64(time.Minute))
	ct := m.Conntrack()

	all, err := ct.List(FlowFilter{})
	must(t, err)
	if len(all) != 8 {
		t.Fatalf("%d entries, want 8", len(all))
	}
	var fwd, rev *Flow
	for i := range all {
		f := &all[i]
		if f.Src == netip.MustParseAddrPort("10.99.0.5:40001") {
			fwd = f
		}
		if f.Src == netip.MustParseAddrPort("10.0.0.1:8080") {
			rev = f
		}
	}
	if fwd == nil || rev == nil {
		t.Fatalf("flow 10.99.0.5:40001 missing a direction: %+v", all)
	}
	if fwd.Direction != "forward" || fwd.Service != "test/web" || fwd.Port != "80" || fwd.Backend != netip.MustParseAddrPort("10.0.0.1:8080") ||
		fwd.Dst != netip.MustParseAddrPort("10.96.0.10:80") || fwd.Packets != 4 || fwd.Bytes != 300 ||
		!slices.Equal(fwd.TCPFlags, []string{"SYN", "ACK"}) || fwd.Expired() || fwd.ExpiresIn > time.Minute || fwd.ExpiresIn < 50*time.Second {
		t.Errorf("forward entry %+v", *fwd)
	}
	if rev.Direction != "reply" || !slices.Equal(rev.Flags, []string{"reply"}) || rev.Dst != netip.MustParseAddrPort("10.99.0.5:40001") {
		t.Errorf("reply entry %+v", *rev)
	}

	count := func(f FlowFilter) int {
		t.Helper()
		l, err := ct.List(f)
		must(t, err)
		return len(l)
	}
	if n := count(FlowFilter{Service: "test/db"}); n != 2 {
		t.Errorf("service filter: %d, want 2", n)
	}
	if n := count(FlowFilter{Backend: netip.MustParseAddrPort("10.0.0.2:8080")}); n != 4 {
		t.Errorf("backend filter: %d, want 4", n)
	}
	if n := count(FlowFilter{Src: addr("10.99.0.5")}); n != 2 {
		t.Errorf("source filter: %d, want 2", n)
	}
	if n := count(FlowFilter{Dst: addr("10.99.0.5"), Proto: ProtocolTCP}); n != 2 {
		t.Errorf("destination filter: %d, want 2", n)
	}
	if n := count(FlowFilter{Proto: ProtocolUDP}); n != 0 {
		t.Errorf("protocol filter: %d, want 0", n)
	}
	if _, err := ct.List(FlowFilter{Service: "test/nope"}); err == nil {
		t.Error("unknown service accepted")
	}

	// GC deletes the expired flow's two entries only.
	n, err := ct.ReapExpired()
	must(t, err)
	if n != 2 {
		t.Fatalf("reaped %d, want 2", n)
	}
	d := m.dump(t)
	if _, ok := d.CT[oldFwd]; ok {
		t.Fatal("expired entry kept")
	}
	if _, ok := d.CT[oldRev]; ok {
		t.Fatal("expired entry kept")
	}
	// Flush per backend, then per service.
	if n, err = ct.Flush(FlowFilter{Backend: netip.MustParseAddrPort("10.0.0.2:8080")}); err != nil || n != 2 {
		t.Fatalf("flush backend: %d %v, want 2", n, err)
	}
	if n, err = ct.Flush(FlowFilter{Service: "test/web"}); err != nil || n != 2 {
		t.Fatalf("flush service: %d %v, want 2", n, err)
	}
	if n := count(FlowFilter{}); n != 2 {
		t.Fatalf("%d left, want db's 2", n)
	}
}

// Flushing scans the whole table in batches: of 20,000 flows over two
// frontends exactly one frontend's go.
func TestConntrackFlushLargeTable(t *testing.T) {
	m := newTestManager(t)
	if _, err := m.Apply(context.Background(), []Service{
		clusterIP("web", "10.96.0.10", "10.0.0.1"), clusterIP("db", "10.96.0.20", "10.0.0.2"),
	}); err != nil {
		t.Fatal(err)
	}
	web, _ := m.frontendOf(t, svcKey("10.96.0.10", 80, unix.IPPROTO_TCP, maps.ScopeInternal))
	db, _ := m.frontendOf(t, svcKey("10.96.0.20", 80, unix.IPPROTO_TCP, maps.ScopeInternal))
	now, _ := monotonicNow()
	const n = 20000
	keys := make([]maps.CtKey, n)
	vals := make([]maps.CtEntry, n)
	for i := range keys {
		keys[i] = maps.CtKey{Saddr: maps.Addr16(netip.AddrFrom4([4]byte{10, 99, byte(i >> 8), byte(i)})), Daddr: maps.Addr16(addr("10.96.0.10")),
			Sport: maps.Port(uint16(1000 + i)), Dport: maps.Port(80), Proto: unix.IPPROTO_TCP, Family: maps.FamilyIPv4}
		vals[i] = maps.CtEntry{Expires: now + uint64(time.Hour), SvcId: web.Id}
		if i%2 == 1 {
			vals[i].SvcId = db.Id
		}
	}
	if _, err := m.dp.conntrack.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatal(err)
	}
	got, err := m.Conntrack().Flush(FlowFilter{Service: "test/db"})
	if err != nil || got != n/2 {
		t.Fatalf("flushed %d (%v), want %d", got, err, n/2)
	}
	left, err := m.Conntrack().List(FlowFilter{})
	if err != nil || len(left) != n/2 {
		t.Fatalf("%d left (%v), want %d", len(left), err, n/2)
	}
	for _, f := range left {
		if f.Service != "test/web" {
			t.Fatalf("left %+v", f)
		}
	}
}
