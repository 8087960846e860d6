package services_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/internal/csum"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
)

// checkSkbContext makes sure the BPF_PROG_RUN context matches the running
// kernel and that the kernel lets the test name the incoming device (the
// client pod's veth, which from_pod's anti-spoofing checks); a kernel that
// cannot skips the test, and the end-to-end tests here cover the path.
func checkSkbContext(t *testing.T) {
	t.Helper()
	if err := progrun.CheckLayout(); err != nil {
		t.Fatal(err)
	}
	if err := progrun.IngressIfindex(); errors.Is(err, progrun.ErrNoIngressIfindex) {
		t.Skipf("%v; the end-to-end tests cover service translation on this kernel", err)
	} else if err != nil {
		t.Fatal(err)
	}
}

// tcActOK is TC_ACT_OK: a translated packet to a backend not on this node
// goes to the stack.
const tcActOK = 0

// synFrame is a TCP SYN in an Ethernet frame, checksums computed.
func synFrame(srcMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16) []byte {
	b := make([]byte, 14+20+20)
	copy(b[0:6], []byte{0xee, 0xee, 0, 0, 0, 1})
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 40)
	binary.BigEndian.PutUint16(ip[6:], 0x4000)
	ip[8], ip[9] = 64, 6
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], csum.Checksum(ip, 0))
	tcp := b[34:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], 1)
	tcp[12] = 5 << 4
	tcp[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	binary.BigEndian.PutUint16(tcp[16:], csum.Checksum(tcp, csum.Pseudo4(src, dst, 6, 20)))
	return b
}

// version is one desired state of the hammered service.
type version struct {
	active map[netip.Addr]bool
}

// While one goroutine keeps rewriting a service (backends added, removed,
// turning terminating or not ready, the algorithm switching between
// random, round robin and Maglev, affinity on and off, always at least one
// active backend), others run the real from_pod program (BPF_PROG_RUN) on
// SYNs of new flows to the frontend. Not one packet may be dropped or
// rejected, and each must go to a backend that was active in a version of
// the service current at some moment during its run: the last version
// fully written before the run, or one being written while it ran.
// Backends that are never active (terminating or not ready from the
// start) must never be chosen.
func TestHammerRewriteUnderTraffic(t *testing.T) {
	checkSkbContext(t)
	cfg := loader.Config{
		PinRoot:  filepath.Join(loader.BPFFSMount, fmt.Sprintf("podpath-svchammer-%d", os.Getpid())),
		StateDir: t.TempDir(),
		PodCIDR:  netip.MustParsePrefix("10.98.0.0/24"),
		// Every packet is a new flow; a small table keeps the control
		// plane's conntrack flushes (on backend removal) cheap.
		Conntrack: 16384,
	}
	t.Cleanup(func() { os.RemoveAll(cfg.PinRoot) })
	if err := loader.Init(cfg); err != nil {
		t.Fatal(err)
	}
	prog, err := loader.LoadPinnedProgram(cfg.PinRoot, maps.ProgFromPod)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()

	// Every packet must be a new flow: a tuple seen before may still have
	// a conntrack entry, which rightly keeps its (maybe terminating)
	// backend. 64 client addresses (one pod's veth, as far as the
	// anti-spoofing check goes) times 60,000 source ports give 3.8 million
	// distinct tuples.
	const clients = 64
	clientMAC := net.HardwareAddr{0x02, 0, 0x0a, 0x62, 0, 5}
	const clientIfindex = 42
	eps, err := maps.OpenEndpoints(cfg.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer eps.Close()
	var info maps.EndpointInfo
	info.Ifindex = clientIfindex
	copy(info.Mac[:], clientMAC)
	copy(info.NodeMac[:], []byte{0xee, 0xee, 0, 0, 0, 1})
	for i := range clients {
		if err := eps.Put(netip.AddrFrom4([4]byte{10, 98, 0, byte(10 + i)}), info); err != nil {
			t.Fatal(err)
		}
	}
	tuple := func(n uint64) (netip.Addr, uint16, bool) {
		return netip.AddrFrom4([4]byte{10, 98, 0, byte(10 + n%clients)}), uint16(1024 + (n/clients)%60000), n < clients*60000
	}

	m, err := services.Open(cfg.PinRoot, cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	vip := netip.MustParseAddr("10.96.0.10")
	pool := make([]netip.Addr, 8)
	for i := range pool {
		pool[i] = netip.AddrFrom4([4]byte{10, 250, 0, byte(i + 1)})
	}
	decoys := []services.Backend{
		{IP: netip.MustParseAddr("10.250.0.100"), Ready: true, Terminating: true},
		{IP: netip.MustParseAddr("10.250.0.101"), Ready: false},
	}
	algorithms := []services.Algorithm{services.AlgorithmRandom, services.AlgorithmRoundRobin, services.AlgorithmMaglev}

	var (
		mu       sync.Mutex
		versions []version
		started  atomic.Int64 // the version being written (or last written)
		done     atomic.Int64 // the last version fully written
		stop     atomic.Bool
	)
	rng := rand.New(rand.NewPCG(7, 11))
	next := func() (services.Service, version) {
		s := services.Service{
			Namespace: "hammer", Name: "web", ClusterIP: vip,
			Ports:     []services.Port{{Port: 80, TargetPort: 8080}},
			Algorithm: algorithms[rng.IntN(len(algorithms))],
		}
		if rng.IntN(4) == 0 {
			s.SessionAffinity = services.AffinityClientIP
		}
		v := version{active: map[netip.Addr]bool{}}
		perm := rng.Perm(len(pool))
		nActive := 1 + rng.IntN(len(pool))
		for i, j := range perm {
			b := services.Backend{IP: pool[j], Ready: true}
			switch {
			case i < nActive:
				v.active[b.IP] = true
			case rng.IntN(3) == 0:
				b.Terminating = true
			case rng.IntN(2) == 0:
				b.Ready = false
			default:
				continue // not listed: removed
			}
			s.Backends = append(s.Backends, b)
		}
		s.Backends = append(s.Backends, decoys...)
		return s, v
	}

	// Version 0.
	s, v := next()
	versions = append(versions, v)
	if _, err := m.Apply(context.Background(), []services.Service{s}); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	const updates = 300
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer stop.Store(true)
		for k := 1; k <= updates; k++ {
			s, v := next()
			mu.Lock()
			versions = append(versions, v)
			mu.Unlock()
			started.Store(int64(k))
			if _, err := m.Upsert(context.Background(), s); err != nil {
				errs <- fmt.Errorf("update %d: %w", k, err)
				return
			}
			done.Store(int64(k))
		}
	}()

	var packets atomic.Int64
	var flows atomic.Uint64
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]byte, 256)
			for !stop.Load() {
				client, port, fresh := tuple(flows.Add(1) - 1)
				if !fresh {
					errs <- fmt.Errorf("ran out of fresh tuples")
					return
				}
				frame := synFrame(clientMAC, client, vip, port, 80)
				lo := done.Load()
				opts := ebpf.RunOptions{Data: frame, DataOut: out, Context: progrun.SkbContext{IngressIfindex: clientIfindex}}
				ret, err := prog.Run(&opts)
				hi := started.Load()
				if err != nil {
					errs <- err
					return
				}
				packets.Add(1)
				if ret != tcActOK {
					errs <- fmt.Errorf("SYN from %s:%d: verdict %d, want %d (TC_ACT_OK: to a backend via the stack); counters: %s",
						client, port, ret, tcActOK, nonzeroCounters(cfg.PinRoot))
					return
				}
				got := opts.DataOut
				dst := netip.AddrFrom4([4]byte(got[30:34]))
				dport := binary.BigEndian.Uint16(got[36:38])
				if got[23] != 6 || dport != 8080 {
					errs <- fmt.Errorf("SYN from %s:%d came out as proto %d to %s:%d", client, port, got[23], dst, dport)
					return
				}
				mu.Lock()
				ok := false
				for k := lo; k <= hi && int(k) < len(versions); k++ {
					ok = ok || versions[k].active[dst]
				}
				mu.Unlock()
				if !ok {
					errs <- fmt.Errorf("SYN from %s:%d went to %s, active in none of versions %d-%d", client, port, dst, lo, hi)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	cs, err := maps.ReadPinnedCounters(cfg.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Reason.IsDrop() || c.Reason == maps.ReasonSvcReject {
			t.Errorf("counter %s/%s: %d packets", c.Hook, c.Reason, c.Packets)
		}
	}
	n := packets.Load()
	t.Logf("%d updates, %d SYNs through from_pod while they were written", updates, n)
	if n < updates {
		t.Fatalf("only %d packets ran during %d updates: the race was hardly exercised", n, updates)
	}
}

// nonzeroCounters lists the node's counters that counted packets, for a
// failure to say which way a packet went.
func nonzeroCounters(pinRoot string) string {
	cs, err := maps.ReadPinnedCounters(pinRoot)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, c := range cs {
		if c.Packets > 0 {
			out = append(out, fmt.Sprintf("%s/%s %d", c.Hook, c.Reason, c.Packets))
		}
	}
	return strings.Join(out, ", ")
}
