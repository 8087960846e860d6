package datapath_test

import (
	"net/netip"
	"runtime"
	"testing"

	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// traceNode is from_pod with a ClusterIP whose backend is pod B, and the
// events ring buffer read.
func traceNode(t *testing.T) (*svcDatapath, *eventsNode) {
	t.Helper()
	requireIngressIfindex(t)
	d := newServiceDatapath(t, clusterIP(protoTCP, beB.ID))
	n := d.node
	e := &eventsNode{fromPod: d.fromPod, config: n.Maps[maps.MapEventConfig], state: n.Maps[maps.MapEventState],
		ring: n.Maps[maps.MapEvents], counters: n.Maps[maps.MapCounters]}
	e.start(t, 1000, 1000)
	return d, e
}

// onOneCPU runs fn on one CPU: tracing samples and counts per CPU.
func onOneCPU(t *testing.T, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	one.Set(0)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	defer unix.SchedSetaffinity(0, &old)
	fn()
}

// With tracing on, a packet the filter selects raises one trace event at
// its verdict, naming the hook, the reason, and the packet before (orig)
// and after translation; one the filter does not select raises none, nor
// does any packet with tracing off. A selected packet that is dropped
// raises its drop event only. Sampling keeps one selected packet in N, and
// trace_state accounts for every selected one.
func TestTraceEvents(t *testing.T) {
	d, e := traceNode(t)
	cfg := d.node.Maps[maps.MapEventConfig]
	syn := tcpFlow(podA.IP, 40000, vip, vipPort, tcpSYN)
	translated := maps.Tuple{Src: podA.IP, Dst: podB.IP, SrcPort: 40000, DstPort: backendPort, Proto: protoTCP}
	before := maps.Tuple{Src: podA.IP, Dst: vip, SrcPort: 40000, DstPort: vipPort, Proto: protoTCP}
	set := func(tr maps.Trace) {
		t.Helper()
		if err := maps.SetTraceMap(cfg, tr); err != nil {
			t.Fatal(err)
		}
	}
	send := func() {
		t.Helper()
		if v, _ := d.runFromPod(t, podA.Ifindex, syn.sentBy(podA)); v != tcActRedirect {
			t.Fatalf("SYN to the ClusterIP: verdict %d, want TC_ACT_REDIRECT", v)
		}
	}
	cases := []struct {
		name  string
		trace maps.Trace
		want  int
	}{
		{"tracing off", maps.Trace{}, 0},
		{"the client's address", maps.Trace{Addr: podA.IP}, 1},
		{"the frontend's address, before translation", maps.Trace{Addr: vip}, 1},
		{"the backend's address, after translation", maps.Trace{Addr: podB.IP}, 1},
		{"the client's device", maps.Trace{Ifindex: podA.Ifindex}, 1},
		{"another address", maps.Trace{Addr: netip.MustParseAddr("10.99.0.1")}, 0},
		{"another device", maps.Trace{Ifindex: podC.Ifindex}, 0},
		{"everything", maps.Trace{All: true}, 1},
	}
	for _, c := range cases {
		set(c.trace)
		send()
		evs := e.drain(t)
		if len(evs) != c.want {
			t.Errorf("%s: %d events, want %d: %+v", c.name, len(evs), c.want, evs)
			continue
		}
		for _, ev := range evs {
			if ev.Kind != "trace" || ev.Hook.String() != "from_pod" || ev.Reason.String() != "forward_local" ||
				ev.Tuple != translated || ev.Orig != before || ev.Ifindex == 0 {
				t.Errorf("%s: event %s %s %s %s (was %s) ifindex %d, want trace from_pod forward_local %s (was %s)",
					c.name, ev.Kind, ev.Hook, ev.Reason, ev.Tuple, ev.Orig, ev.Ifindex, translated, before)
			}
		}
	}

	// A selected packet that is dropped raises its drop event, not a trace.
	set(maps.Trace{All: true})
	spoof := tcpFlow(unknownIP, 40000, vip, vipPort, tcpSYN).sentBy(podA)
	if v, _ := d.runFromPod(t, podA.Ifindex, spoof); v != tcActShot {
		t.Fatalf("spoofed SYN: verdict %d, want TC_ACT_SHOT", v)
	}
	if evs := e.drain(t); len(evs) != 1 || evs[0].Kind != "drop" {
		t.Errorf("a traced packet dropped: events %+v, want its drop event only", evs)
	}

	// One in three, on one CPU.
	set(maps.Trace{All: true, Sample: 3})
	before0, err := maps.TraceStatsOf(d.node.Maps[maps.MapTraceState])
	if err != nil {
		t.Fatal(err)
	}
	onOneCPU(t, func() {
		for range 9 {
			send()
		}
	})
	after, err := maps.TraceStatsOf(d.node.Maps[maps.MapTraceState])
	if err != nil {
		t.Fatal(err)
	}
	evs := e.drain(t)
	matched, sent, out := after.Matched-before0.Matched, after.Sent-before0.Sent, after.SampledOut-before0.SampledOut
	if len(evs) != 3 || matched != 9 || sent != 3 || out != 6 || after.RingbufFull != 0 {
		t.Errorf("9 packets sampled 1 in 3: %d events, trace state matched %d sent %d sampled out %d ring buffer full %d; want 3, 9, 3, 6, 0",
			len(evs), matched, sent, out, after.RingbufFull)
	}
	set(maps.Trace{})
	if got, err := maps.ReadEventConfigMap(cfg); err != nil || maps.TraceOf(got).On() || got.DropRate != 1000 {
		t.Errorf("tracing off again: config %+v (%v), want tracing off and the drop events' rate kept", got, err)
	}
}
