package maps

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Go mirrors of the events' records (bpf/lib/maps.h).
type (
	Event       = fromPodEvent
	EventConfig = fromPodEventConfig
	EventState  = fromPodEventState
	TraceState  = fromPodTraceState
)

// What raises trace events (enum trace_flags in bpf/lib/maps.h).
const (
	TraceAll     = 1 // every packet
	TraceIfindex = 2 // packets on one device
	TraceAddr    = 4 // packets from or to one address
)

// Kinds of event (enum event_kind).
const (
	EventDrop  = 1
	EventTrace = 2
)

// Default rate limit of drop events, per CPU.
const (
	DefaultDropEventRate  = 1000 // events per second
	DefaultDropEventBurst = 1000 // events at once after a quiet spell
	MaxDropEventRate      = 1_000_000
)

// Tuple is an event's packet: addresses, ports (ICMP: type and code) and
// protocol. Zero when the packet was no IPv4.
type Tuple struct {
	Src     netip.Addr
	Dst     netip.Addr
	SrcPort uint16
	DstPort uint16
	Proto   uint8
}

// TupleOf decodes a record's tuple field.
func tupleOf(saddr, daddr uint32, sport, dport uint16, proto uint8) Tuple {
	if proto == 0 && saddr == 0 && daddr == 0 {
		return Tuple{}
	}
	var s, d [4]byte
	putNativeU32(s[:], saddr)
	putNativeU32(d[:], daddr)
	return Tuple{Src: netip.AddrFrom4(s), Dst: netip.AddrFrom4(d), SrcPort: HostPort(sport), DstPort: HostPort(dport), Proto: proto}
}

// IsZero tells an unknown tuple.
func (t Tuple) IsZero() bool { return !t.Src.IsValid() }

// ProtoName names the protocol: tcp, udp, icmp or its number.
func (t Tuple) ProtoName() string { return ProtoName(t.Proto) }

// ProtoName names an IP protocol number.
func ProtoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP:
		return "icmp"
	}
	return fmt.Sprintf("proto-%d", p)
}

// String is "tcp 10.0.0.1:1234 -> 10.0.0.2:80", "icmp 10.0.0.1 -> 10.0.0.2
// type 8 code 0", or "" for no IPv4 packet.
func (t Tuple) String() string {
	switch {
	case t.IsZero():
		return ""
	case t.Proto == unix.IPPROTO_ICMP:
		return fmt.Sprintf("icmp %s -> %s type %d code %d", t.Src, t.Dst, t.SrcPort, t.DstPort)
	case t.Proto == unix.IPPROTO_TCP || t.Proto == unix.IPPROTO_UDP:
		return fmt.Sprintf("%s %s -> %s", t.ProtoName(), netip.AddrPortFrom(t.Src, t.SrcPort), netip.AddrPortFrom(t.Dst, t.DstPort))
	}
	return fmt.Sprintf("%s %s -> %s", t.ProtoName(), t.Src, t.Dst)
}

// DecodedEvent is an event with its fields named.
type DecodedEvent struct {
	Raw       Event
	Time      time.Time // wall clock, from the kernel's monotonic stamp
	Kind      string    // drop, trace
	Hook      Hook
	Reason    Reason
	Ifindex   uint32
	Len       uint32
	Ethertype uint16
	Tuple     Tuple // as the packet was when the event was raised
	Orig      Tuple // as it arrived at the hook, when translated first
}

// DecodeEvent reads one ring buffer record.
func DecodeEvent(b []byte) (DecodedEvent, error) {
	var e Event
	if len(b) < binary.Size(e) {
		return DecodedEvent{}, fmt.Errorf("event of %d bytes, want %d", len(b), binary.Size(e))
	}
	if err := binary.Read(bytes.NewReader(b), binary.NativeEndian, &e); err != nil {
		return DecodedEvent{}, fmt.Errorf("decode event: %w", err)
	}
	d := DecodedEvent{
		Raw:       e,
		Time:      monotonicToWall(e.TsNs),
		Hook:      Hook(e.Hook),
		Reason:    Reason(e.Reason),
		Ifindex:   e.Ifindex,
		Len:       e.Len,
		Ethertype: HostPort(e.Ethertype),
		Tuple:     tupleOf(e.Tuple.Saddr, e.Tuple.Daddr, e.Tuple.Sport, e.Tuple.Dport, e.Tuple.Proto),
		Orig:      tupleOf(e.Orig.Saddr, e.Orig.Daddr, e.Orig.Sport, e.Orig.Dport, e.Orig.Proto),
	}
	switch e.Kind {
	case EventDrop:
		d.Kind = "drop"
	case EventTrace:
		d.Kind = "trace"
	default:
		d.Kind = fmt.Sprintf("kind-%d", e.Kind)
	}
	return d, nil
}

// monotonicToWall converts a bpf_ktime_get_ns() stamp to the wall clock.
func monotonicToWall(ns uint64) time.Time {
	var ts unix.Timespec
	now := time.Now()
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return now
	}
	return now.Add(-time.Duration(uint64(ts.Nano()) - ns))
}

// OpenEvents opens the node's events ring buffer for reading. One reader
// at a time consumes it: two would split the events between them.
func OpenEvents(root string) (*ringbuf.Reader, error) {
	m, err := OpenPinned(root, MapEvents)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	r, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	return r, nil
}

// EventStats is what became of the events, summed over CPUs.
type EventStats struct {
	Sent        uint64 `json:"sent"`
	RateLimited uint64 `json:"rateLimited"`
	RingbufFull uint64 `json:"ringbufFull"`
}

// ReadEventStats sums event_state over the CPUs.
func ReadEventStats(root string) (EventStats, error) {
	m, err := OpenPinned(root, MapEventState)
	if err != nil {
		return EventStats{}, err
	}
	defer m.Close()
	return EventStatsOf(m)
}

// EventStatsOf sums an event_state map over the CPUs.
func EventStatsOf(m *ebpf.Map) (EventStats, error) {
	var per []EventState
	if err := m.Lookup(uint32(0), &per); err != nil {
		return EventStats{}, fmt.Errorf("read event state: %w", err)
	}
	var s EventStats
	for _, p := range per {
		s.Sent += p.Sent
		s.RateLimited += p.RateLimited
		s.RingbufFull += p.RingbufFull
	}
	return s, nil
}

// ReadEventConfig reads the node's event_config.
func ReadEventConfig(root string) (EventConfig, error) {
	m, err := OpenPinned(root, MapEventConfig)
	if err != nil {
		return EventConfig{}, err
	}
	defer m.Close()
	return ReadEventConfigMap(m)
}

// ReadEventConfigMap reads an event_config map.
func ReadEventConfigMap(m *ebpf.Map) (EventConfig, error) {
	var cfg EventConfig
	if err := m.Lookup(uint32(0), &cfg); err != nil {
		return cfg, fmt.Errorf("read event config: %w", err)
	}
	return cfg, nil
}

// WriteEventConfig sets the drop events' rate limit (rate 0: none).
func WriteEventConfig(m *ebpf.Map, rate, burst uint32) error {
	if rate > MaxDropEventRate || burst > MaxDropEventRate {
		return fmt.Errorf("drop events: rate %d and burst %d must be at most %d", rate, burst, MaxDropEventRate)
	}
	if rate > 0 && burst == 0 {
		return errors.New("drop events: a burst of 0 sends none; give at least 1")
	}
	var cfg EventConfig
	if err := m.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read event config: %w", err)
	}
	cfg.DropRate, cfg.DropBurst = rate, burst
	if err := m.Update(uint32(0), &cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write event config: %w", err)
	}
	return nil
}

// Trace is what raises trace events: nothing (the zero value), every
// packet (All), or the packets on a device (Ifindex) or from or to an
// address before or after translation (Addr), one in Sample of those
// (per CPU; 0 or 1 every one).
type Trace struct {
	All     bool       `json:"all,omitempty"`
	Ifindex uint32     `json:"ifindex,omitempty"`
	Addr    netip.Addr `json:"addr,omitempty"`
	Sample  uint32     `json:"sample,omitempty"`
}

// On says whether t selects any packet.
func (t Trace) On() bool { return t.All || t.Ifindex != 0 || t.Addr.IsValid() }

// TraceOf reads the trace settings of an event_config.
func TraceOf(cfg EventConfig) Trace {
	t := Trace{All: cfg.TraceFlags&TraceAll != 0, Sample: cfg.TraceSample}
	if cfg.TraceFlags&TraceIfindex != 0 {
		t.Ifindex = cfg.TraceIfindex
	}
	if cfg.TraceFlags&TraceAddr != 0 {
		var b [4]byte
		putNativeU32(b[:], cfg.TraceAddr)
		t.Addr = netip.AddrFrom4(b)
	}
	if !t.On() {
		t.Sample = 0
	}
	return t
}

// SetTrace writes t into the node's event_config, keeping the drop events'
// settings; the zero Trace switches tracing off.
func SetTrace(root string, t Trace) error {
	m, err := OpenPinned(root, MapEventConfig)
	if err != nil {
		return err
	}
	defer m.Close()
	return SetTraceMap(m, t)
}

// SetTraceMap is SetTrace on an event_config map.
func SetTraceMap(m *ebpf.Map, t Trace) error {
	if t.Addr.IsValid() && !t.Addr.Is4() {
		return fmt.Errorf("trace %s: only IPv4 addresses are traced", t.Addr)
	}
	var cfg EventConfig
	if err := m.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read event config: %w", err)
	}
	cfg.TraceFlags, cfg.TraceIfindex, cfg.TraceAddr, cfg.TraceSample = 0, 0, 0, 0
	if t.All {
		cfg.TraceFlags |= TraceAll
	}
	if t.Ifindex != 0 {
		cfg.TraceFlags |= TraceIfindex
		cfg.TraceIfindex = t.Ifindex
	}
	if t.Addr.IsValid() {
		cfg.TraceFlags |= TraceAddr
		cfg.TraceAddr = nativeU32(t.Addr.AsSlice())
	}
	if cfg.TraceFlags != 0 {
		cfg.TraceSample = t.Sample
	}
	if err := m.Update(uint32(0), &cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write event config: %w", err)
	}
	return nil
}

// TraceStats is what became of the packets tracing selected, summed over
// CPUs.
type TraceStats struct {
	Matched     uint64 `json:"matched"`
	Sent        uint64 `json:"sent"`
	SampledOut  uint64 `json:"sampledOut"`
	RingbufFull uint64 `json:"ringbufFull"`
}

// ReadTraceStats sums trace_state over the CPUs.
func ReadTraceStats(root string) (TraceStats, error) {
	m, err := OpenPinned(root, MapTraceState)
	if err != nil {
		return TraceStats{}, err
	}
	defer m.Close()
	return TraceStatsOf(m)
}

// TraceStatsOf sums a trace_state map over the CPUs.
func TraceStatsOf(m *ebpf.Map) (TraceStats, error) {
	var per []TraceState
	if err := m.Lookup(uint32(0), &per); err != nil {
		return TraceStats{}, fmt.Errorf("read trace state: %w", err)
	}
	var s TraceStats
	for _, p := range per {
		s.Matched += p.Matched
		s.Sent += p.Sent
		s.SampledOut += p.SampledOut
		s.RingbufFull += p.RingbufFull
	}
	return s, nil
}
