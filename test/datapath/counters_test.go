package datapath_test

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// Every packet is counted exactly once, under one (reason, hook), with its
// length in bytes; user space reads the names from BTF.
func TestCountersAfterKnownSequence(t *testing.T) {
	d := newDatapath(t, podA, podB)
	udpFrom := func(p pod, dst netip.Addr, size int) []byte {
		hdr := ipv4Header{ID: 1, TTL: 64, Protocol: protoUDP, Src: p.IP, Dst: dst}
		return ether(p.NodeMAC, p.MAC, ethPIPv4, ipv4(hdr, udp(p.IP, dst, 9, 9, make([]byte, size))))
	}
	const overhead = ethHeaderLen + ipv4HeaderLen + 8 // Ethernet, IPv4, UDP headers

	sequence := []struct {
		ifindex uint32
		frame   []byte
		verdict uint32
	}{
		{podA.Ifindex, udpFrom(podA, podB.IP, 100), tcActRedirect},
		{podA.Ifindex, udpFrom(podA, podB.IP, 200), tcActRedirect},
		{podB.Ifindex, udpFrom(podB, podA.IP, 300), tcActRedirect},
		{podA.Ifindex, udpFrom(podA, internetIP, 10), tcActOK},
		{podA.Ifindex, udpFrom(podB, internetIP, 20), tcActShot}, // B's packet on A's veth
		{podB.Ifindex, udpFrom(podB, internetIP, 30), tcActOK},
		{podA.Ifindex, ether(broadcastMAC, podA.MAC, ethPARP, arp(arpIPv4{Op: arpRequest, SHA: podA.MAC, SIP: podA.IP, TIP: gatewayIP})), tcActOK},
	}
	for i, s := range sequence {
		if ret, _ := d.runFromPod(t, s.ifindex, s.frame); ret != s.verdict {
			t.Fatalf("packet %d: verdict %d, want %d", i, ret, s.verdict)
		}
	}
	if ret, _ := d.runXDP(t, udpFrom(podA, podB.IP, 40)); ret != xdpPass {
		t.Fatalf("xdp: verdict %d, want XDP_PASS", ret)
	}
	if ret, _ := d.runXDP(t, make([]byte, 13)); ret != xdpDrop {
		t.Fatalf("xdp: verdict %d, want XDP_DROP", ret)
	}

	d.expectCounts(t, counts{
		"from_pod/forward_local":   {3, 3*overhead + 100 + 200 + 300},
		"from_pod/to_stack":        {2, 2*overhead + 10 + 30},
		"from_pod/drop_spoofed_ip": {1, overhead + 20},
		"from_pod/arp_to_stack":    {1, ethHeaderLen + 28},
		"xdp/to_stack":             {1, overhead + 40},
		"xdp/drop_truncated":       {1, 13},
	})
}

// The counters are per CPU: ReadCounters sums the CPUs' slots. One packet
// is run on each of several CPUs; each CPU's slot holds exactly its own.
func TestCountersSumOverCPUs(t *testing.T) {
	var cpus []int
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	for cpu := 0; cpu < 1024 && len(cpus) < 4; cpu++ {
		if set.IsSet(cpu) {
			cpus = append(cpus, cpu)
		}
	}
	if len(cpus) < 2 {
		t.Skipf("only %d CPU available: per-CPU summing cannot be observed", len(cpus))
	}

	d := newDatapath(t, podA, podB)
	frame := ether(podA.NodeMAC, podA.MAC, 0x88cc, make([]byte, 46)) // LLDP: dropped
	for _, cpu := range cpus {
		if err := onCPU(cpu, func() error {
			_, _, err := d.fromPod.Test(frame) // no context needed: dropped on ethertype
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}

	d.expectCounts(t, counts{"from_pod/drop_unsupported_l3": {uint64(len(cpus)), uint64(len(cpus) * len(frame))}})

	key := maps.CounterKey{
		Reason: uint16(reasonNamed(t, "drop_unsupported_l3")),
		Hook:   uint8(hookNamed(t, "from_pod")),
	}
	var perCPU []maps.CounterValue
	if err := d.counters.Lookup(&key, &perCPU); err != nil {
		t.Fatal(err)
	}
	for _, cpu := range cpus {
		if got := perCPU[cpu]; got.Packets != 1 || got.Bytes != uint64(len(frame)) {
			t.Errorf("CPU %d: %d packets, %d bytes; want 1, %d", cpu, got.Packets, got.Bytes, len(frame))
		}
	}
}

// onCPU runs f on a thread pinned to cpu; BPF_PROG_RUN runs the program on
// the calling CPU.
func onCPU(cpu int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the pinned thread exits with the goroutine
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errc <- fmt.Errorf("pin to CPU %d: %w", cpu, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// reasonNamed finds a reason by the name user space shows for it.
func reasonNamed(t *testing.T, name string) maps.Reason {
	t.Helper()
	for v, n := range maps.ReasonNames() {
		if n == name {
			return maps.Reason(v)
		}
	}
	t.Fatalf("no reason named %q", name)
	return 0
}

// hookNamed finds a hook by the name user space shows for it.
func hookNamed(t *testing.T, name string) maps.Hook {
	t.Helper()
	for h := range maps.Hook(256) {
		if h.String() == name {
			return h
		}
	}
	t.Fatalf("no hook named %q", name)
	return 0
}
