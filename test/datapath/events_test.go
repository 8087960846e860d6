package datapath_test

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/podpath/podpath/internal/packet"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/maps"
)

// eventsNode is from_pod and xdp_netdev with the events maps at hand.
type eventsNode struct {
	fromPod, xdp        *ebpf.Program
	config, state, ring *ebpf.Map
	reader              *ringbuf.Reader
	counters            *ebpf.Map
}

func newEventsNode(t *testing.T, rate, burst uint32) *eventsNode {
	t.Helper()
	n := loadNode(t, []string{maps.ProgFromPod, maps.ProgXDPNetdev}, nil, 0)
	e := &eventsNode{fromPod: n.Programs[maps.ProgFromPod], xdp: n.Programs[maps.ProgXDPNetdev],
		config: n.Maps[maps.MapEventConfig], state: n.Maps[maps.MapEventState], ring: n.Maps[maps.MapEvents],
		counters: n.Maps[maps.MapCounters]}
	if err := maps.NewEndpoints(n.Maps[maps.MapEndpoints]).Put(podA.IP, podA.info()); err != nil {
		t.Fatal(err)
	}
	e.start(t, rate, burst)
	return e
}

// start sets the drop events' limit and reads the ring buffer.
func (e *eventsNode) start(t *testing.T, rate, burst uint32) {
	t.Helper()
	if err := maps.WriteEventConfig(e.config, rate, burst); err != nil {
		t.Fatal(err)
	}
	r, err := ringbuf.NewReader(e.ring)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	e.reader = r
}

// drain reads every event in the ring buffer.
func (e *eventsNode) drain(t *testing.T) []maps.DecodedEvent {
	t.Helper()
	var out []maps.DecodedEvent
	for {
		e.reader.SetDeadline(time.Now().Add(50 * time.Millisecond))
		rec, err := e.reader.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		d, err := maps.DecodeEvent(rec.RawSample)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
}

func (e *eventsNode) stats(t *testing.T) maps.EventStats {
	t.Helper()
	s, err := maps.EventStatsOf(e.state)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A dropped packet raises one event naming the hook, the reason, the
// packet's length and ethertype, its addresses, protocol and ports (ICMP:
// type and code), as far as the packet has them (a frame too short for an
// Ethernet header: none of them), and a packet that is forwarded raises
// none.
func TestDropEventFields(t *testing.T) {
	e := newEventsNode(t, 1000, 1000)
	spoofUDP := ether(podA.NodeMAC, podA.MAC, ethPIPv4,
		ipv4(ipv4Header{ID: 7, TTL: 64, Protocol: protoUDP, Src: unknownIP, Dst: podB.IP},
			udp(unknownIP, podB.IP, 40000, 53, []byte("spoof"))))
	spoofICMP := ether(podA.NodeMAC, podA.MAC, ethPIPv4,
		ipv4(ipv4Header{ID: 8, TTL: 64, Protocol: 1, Src: unknownIP, Dst: internetIP},
			packet.ICMP(8, 0, 0x12340001, []byte("ping"))))
	// The IP header claims the 5 bytes of payload the frame no longer has.
	shortIP := spoofUDP[:len(spoofUDP)-5]

	type want struct {
		hook, reason string
		len          uint32
		ethertype    uint16
		tuple        maps.Tuple
	}
	cases := []struct {
		name string
		run  func() uint32
		want want
	}{
		{"spoofed UDP at from_pod", func() uint32 { return runTC(t, e.fromPod, maps.ProgFromPod, skbContext{}, spoofUDP).verdict },
			want{"from_pod", "drop_spoofed_ip", uint32(len(spoofUDP)), 0x0800,
				maps.Tuple{Src: unknownIP, Dst: podB.IP, SrcPort: 40000, DstPort: 53, Proto: protoUDP}}},
		{"spoofed ICMP echo at from_pod", func() uint32 { return runTC(t, e.fromPod, maps.ProgFromPod, skbContext{}, spoofICMP).verdict },
			want{"from_pod", "drop_spoofed_ip", uint32(len(spoofICMP)), 0x0800,
				maps.Tuple{Src: unknownIP, Dst: internetIP, SrcPort: 8, DstPort: 0, Proto: 1}}},
		{"truncated IP header at from_pod", func() uint32 { return runTC(t, e.fromPod, maps.ProgFromPod, skbContext{}, shortIP).verdict },
			want{"from_pod", "drop_truncated", uint32(len(shortIP)), 0x0800,
				maps.Tuple{Src: unknownIP, Dst: podB.IP, SrcPort: 40000, DstPort: 53, Proto: protoUDP}}},
	}
	for _, c := range cases {
		if v := c.run(); v != tcActShot {
			t.Fatalf("%s: verdict %d, want TC_ACT_SHOT", c.name, v)
		}
		evs := e.drain(t)
		if len(evs) != 1 {
			t.Fatalf("%s: %d events, want 1: %+v", c.name, len(evs), evs)
		}
		ev := evs[0]
		got := want{ev.Hook.String(), ev.Reason.String(), ev.Len, ev.Ethertype, ev.Tuple}
		if got != c.want || ev.Kind != "drop" || !ev.Orig.IsZero() {
			t.Errorf("%s: event %+v (kind %s, orig %v), want %+v", c.name, got, ev.Kind, ev.Orig, c.want)
		}
		if age := time.Since(ev.Time); age < -time.Second || age > 5*time.Second {
			t.Errorf("%s: event stamped %v, %v from now", c.name, ev.Time, age)
		}
		t.Logf("%s: %s %s %s len %d", c.name, ev.Hook, ev.Reason, ev.Tuple, ev.Len)
	}

	// xdp_netdev: a frame shorter than an Ethernet header.
	ret, _, err := progrun.RunXDP(e.xdp, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
	if errors.Is(err, progrun.ErrNoXDPContext) {
		t.Logf("xdp_netdev not run: %v", err)
	} else if err != nil {
		t.Fatal(err)
	} else {
		evs := e.drain(t)
		if ret != xdpDrop || len(evs) != 1 || evs[0].Hook.String() != "xdp" || evs[0].Reason.String() != "drop_truncated" ||
			evs[0].Ethertype != 0 || !evs[0].Tuple.IsZero() {
			t.Errorf("xdp_netdev on a 10-byte frame: verdict %d, events %+v, want one xdp drop_truncated without ethertype or tuple", ret, evs)
		}
	}

	// A packet the program forwards raises nothing.
	toStack := ether(podA.NodeMAC, podA.MAC, ethPIPv4,
		ipv4(ipv4Header{ID: 9, TTL: 64, Protocol: protoUDP, Src: podA.IP, Dst: internetIP}, udp(podA.IP, internetIP, 40000, 53, nil)))
	requireIngressIfindex(t)
	if v := runTC(t, e.fromPod, maps.ProgFromPod, skbContext{IngressIfindex: podA.Ifindex}, toStack).verdict; v == tcActShot {
		t.Fatalf("a pod's own packet was dropped")
	}
	if evs := e.drain(t); len(evs) != 0 {
		t.Errorf("a packet let through raised %d events: %+v", len(evs), evs)
	}
	if s := e.stats(t); s.Sent != uint64(len(cases))+1 && s.Sent != uint64(len(cases)) || s.RateLimited != 0 || s.RingbufFull != 0 {
		t.Errorf("event stats %+v, want every event sent", s)
	}
}

// A flood of drops sends at most the burst plus the rate over its
// duration: the rest is counted as held back, every drop is still
// counted, and the ring buffer holds exactly the events sent.
func TestDropEventsRateLimited(t *testing.T) {
	const rate, burst, n = 100, 50, 20000
	e := newEventsNode(t, rate, burst)
	spoof := ether(podA.NodeMAC, podA.MAC, ethPIPv4,
		ipv4(ipv4Header{ID: 7, TTL: 64, Protocol: protoUDP, Src: unknownIP, Dst: podB.IP}, udp(unknownIP, podB.IP, 40000, 53, nil)))
	// The buckets are per CPU, and a repeated BPF_PROG_RUN may move to
	// another CPU when it yields (5.10 does): one CPU, one bucket.
	defer pinToOneCPU(t)()
	start := time.Now()
	ret, err := e.fromPod.Run(&ebpf.RunOptions{Data: spoof, Repeat: n})
	elapsed := time.Since(start)
	if err != nil || ret != tcActShot {
		t.Fatalf("run from_pod %d times: %d, %v", n, ret, err)
	}
	s := e.stats(t)
	most := uint64(burst + rate*elapsed.Seconds() + 1)
	if s.Sent < burst || s.Sent > most || s.Sent+s.RateLimited != n || s.RingbufFull != 0 {
		t.Fatalf("%d drops in %v: %+v; want %d-%d sent, the rest rate-limited", n, elapsed, s, burst, most)
	}
	if got := len(e.drain(t)); uint64(got) != s.Sent {
		t.Fatalf("ring buffer holds %d events, %d sent", got, s.Sent)
	}
	var (
		key     maps.CounterKey
		per     []maps.CounterValue
		packets uint64
	)
	for it := e.counters.Iterate(); it.Next(&key, &per); {
		if maps.Reason(key.Reason).String() == "drop_spoofed_ip" && maps.Hook(key.Hook) == maps.HookFromPod {
			for _, v := range per {
				packets += v.Packets
			}
		}
	}
	if packets != n {
		t.Fatalf("drop_spoofed_ip counted %d packets, want %d", packets, n)
	}
	t.Logf("%d drops in %v: %d events sent, %d held back", n, elapsed, s.Sent, s.RateLimited)
}

// With no reader, the ring buffer fills: the events it cannot take are
// counted as lost, and nothing else changes for the packets.
func TestDropEventsRingBufferFull(t *testing.T) {
	const n = 40000 // the 1 MiB ring takes about 14,000 records
	e := newEventsNode(t, maps.MaxDropEventRate, maps.MaxDropEventRate)
	spoof := ether(podA.NodeMAC, podA.MAC, ethPIPv4,
		ipv4(ipv4Header{ID: 7, TTL: 64, Protocol: protoUDP, Src: unknownIP, Dst: podB.IP}, udp(unknownIP, podB.IP, 40000, 53, nil)))
	if ret, err := e.fromPod.Run(&ebpf.RunOptions{Data: spoof, Repeat: n}); err != nil || ret != tcActShot {
		t.Fatalf("run from_pod %d times: %d, %v", n, ret, err)
	}
	s := e.stats(t)
	if s.RingbufFull == 0 || s.Sent+s.RingbufFull+s.RateLimited != n {
		t.Fatalf("%d drops into a ring buffer nobody reads: %+v; want some lost to a full buffer, all accounted", n, s)
	}
	if got := len(e.drain(t)); uint64(got) != s.Sent {
		t.Fatalf("ring buffer holds %d events, %d sent", got, s.Sent)
	}
	t.Logf("%d drops: %+v", n, s)
}

// Drop events off (rate 0): none sent, none counted as held back.
func TestDropEventsOff(t *testing.T) {
	e := newEventsNode(t, 0, 0)
	spoof := ether(podA.NodeMAC, podA.MAC, ethPIPv4,
		ipv4(ipv4Header{ID: 7, TTL: 64, Protocol: protoUDP, Src: unknownIP, Dst: podB.IP}, udp(unknownIP, podB.IP, 40000, 53, nil)))
	if v := runTC(t, e.fromPod, maps.ProgFromPod, skbContext{}, spoof).verdict; v != tcActShot {
		t.Fatalf("verdict %d", v)
	}
	if evs := e.drain(t); len(evs) != 0 {
		t.Fatalf("events off, yet %d sent", len(evs))
	}
	if s := e.stats(t); s != (maps.EventStats{}) {
		t.Fatalf("events off: stats %+v", s)
	}
}
