package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// monitorFilter selects the events monitor prints; zero fields match all.
type monitorFilter struct {
	pod     string // a pod's address or its host-side device
	addr    netip.Addr
	port    uint16
	proto   uint8
	kind    string
	reason  string
	podIfx  uint32
	podAddr netip.Addr
}

func newMonitorCmd(g *globals) *cobra.Command {
	var (
		f                     monitorFilter
		addr, proto, kindFlag string
		port                  int
		stats                 bool
		traceSel              string
		traceSample           uint32
	)
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Stream the datapath's drop events, and with --trace its verdicts on chosen packets, as they happen (no daemon needed)",
		Long: `Reads the node's events ring buffer: one line per dropped packet, with
the hook, the device and pod, the reason and the packet's addresses and
ports, until interrupted. Drop events are rate-limited per CPU (node init
--drop-event-rate); --stats says how many were sent, held back by the limit,
or lost to a full ring buffer. One monitor reads a node's events at a time.

--trace switches tracing on while the monitor runs: every hook's verdict on
each selected packet (all, a pod's, or an address's, before or after
translation) raises a trace event with the packet as it arrived at the hook
and as it left, one in --trace-sample of them per CPU. Switching tracing
on and off reloads the node's programs in place (as node init does, with
the node recorded in --state-dir), so with it off they carry none of its
checks; it is switched off again when the monitor exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if stats {
				s, err := maps.ReadEventStats(g.pinRoot)
				if err != nil {
					return err
				}
				ts, err := maps.ReadTraceStats(g.pinRoot)
				if err != nil {
					return err
				}
				out := struct {
					maps.EventStats
					Trace maps.TraceStats `json:"trace"`
				}{s, ts}
				return g.render(out, func(w io.Writer) {
					fmt.Fprintln(w, "EVENTS\tSELECTED\tSENT\tRATE LIMITED\tSAMPLED OUT\tRING BUFFER FULL")
					fmt.Fprintf(w, "drop\t-\t%d\t%d\t-\t%d\n", s.Sent, s.RateLimited, s.RingbufFull)
					fmt.Fprintf(w, "trace\t%d\t%d\t-\t%d\t%d\n", ts.Matched, ts.Sent, ts.SampledOut, ts.RingbufFull)
				})
			}
			if g.output != "" && g.output != "table" && g.output != "json" {
				return fmt.Errorf("unknown output format %q (want table or json)", g.output)
			}
			if err := f.parse(addr, proto, kindFlag, port); err != nil {
				return err
			}
			if err := f.resolvePod(g.pinRoot); err != nil {
				return err
			}
			tr, err := parseTrace(g.pinRoot, traceSel, traceSample)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return monitor(ctx, g.pinRoot, g.stateDir, f, tr, g.output == "json", cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.pod, "pod", "", "only events of this pod: its address or its host-side device")
	fl.StringVar(&addr, "addr", "", "only packets from or to this address")
	fl.IntVar(&port, "port", 0, "only packets from or to this port (TCP, UDP)")
	fl.StringVar(&proto, "proto", "", "only this protocol: tcp, udp or icmp")
	fl.StringVar(&kindFlag, "type", "", "only events of this type: drop or trace")
	fl.StringVar(&traceSel, "trace", "", "trace while running: all, a pod (address or host-side device), or an address")
	fl.Uint32Var(&traceSample, "trace-sample", 1, "with --trace: one selected packet in this many raises an event (per CPU)")
	fl.StringVar(&f.reason, "reason", "", "only events of this reason (for example drop_spoofed_ip; see podpath counters)")
	fl.BoolVar(&stats, "stats", false, "print how many drop and trace events were sent, rate-limited, sampled out and lost, and exit")
	return cmd
}

func (f *monitorFilter) parse(addr, proto, kind string, port int) error {
	if addr != "" {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return fmt.Errorf("--addr %q: not an IP address", addr)
		}
		f.addr = a.Unmap()
	}
	if port < 0 || port > 65535 {
		return fmt.Errorf("--port %d: want 1-65535", port)
	}
	f.port = uint16(port)
	switch proto {
	case "":
	case "tcp":
		f.proto = unix.IPPROTO_TCP
	case "udp":
		f.proto = unix.IPPROTO_UDP
	case "icmp":
		f.proto = unix.IPPROTO_ICMP
	default:
		return fmt.Errorf("--proto %q: want tcp, udp or icmp", proto)
	}
	switch kind {
	case "", "drop", "trace":
		f.kind = kind
	default:
		return fmt.Errorf("--type %q: want drop or trace", kind)
	}
	if f.reason != "" {
		known := false
		for _, n := range maps.ReasonNames() {
			known = known || n == f.reason
		}
		if !known {
			return fmt.Errorf("--reason %q: no such reason (see podpath counters)", f.reason)
		}
	}
	return nil
}

// resolvePod finds --pod's address and device among the node's endpoints.
func (f *monitorFilter) resolvePod(root string) error {
	if f.pod == "" {
		return nil
	}
	list, err := maps.ListEndpoints(root)
	if err != nil {
		return err
	}
	a, perr := netip.ParseAddr(f.pod)
	isAddr := perr == nil
	for _, e := range list {
		dev, _ := net.InterfaceByIndex(int(e.Info.Ifindex))
		if (isAddr && e.IP == a.Unmap()) || (dev != nil && dev.Name == f.pod) {
			f.podIfx, f.podAddr = e.Info.Ifindex, e.IP
			return nil
		}
	}
	return fmt.Errorf("--pod %q: no endpoint of this node has that address or host-side device (see podpath endpoint list)", f.pod)
}

func (f *monitorFilter) match(e maps.DecodedEvent) bool {
	has := func(a netip.Addr) bool {
		return e.Tuple.Src == a || e.Tuple.Dst == a || (!e.Orig.IsZero() && (e.Orig.Src == a || e.Orig.Dst == a))
	}
	switch {
	case f.kind != "" && e.Kind != f.kind:
	case f.reason != "" && e.Reason.String() != f.reason:
	case f.addr.IsValid() && !has(f.addr):
	case f.proto != 0 && e.Tuple.Proto != f.proto:
	case f.port != 0 && (e.Tuple.Proto == unix.IPPROTO_ICMP || (e.Tuple.SrcPort != f.port && e.Tuple.DstPort != f.port)):
	case f.podIfx != 0 && e.Ifindex != f.podIfx && !has(f.podAddr):
	default:
		return true
	}
	return false
}

// monitorEvent is an event as monitor prints it.
type monitorEvent struct {
	Time     time.Time `json:"time"`
	Type     string    `json:"type"`
	Reason   string    `json:"reason"`
	Hook     string    `json:"hook"`
	Ifindex  uint32    `json:"ifindex"`
	Device   string    `json:"device,omitempty"`
	Pod      string    `json:"pod,omitempty"` // the endpoint's address
	Len      uint32    `json:"len"`
	Proto    string    `json:"proto,omitempty"`
	Src      string    `json:"src,omitempty"`
	Dst      string    `json:"dst,omitempty"`
	SrcPort  uint16    `json:"srcPort,omitempty"`
	DstPort  uint16    `json:"dstPort,omitempty"`
	OrigSrc  string    `json:"origSrc,omitempty"`
	OrigDst  string    `json:"origDst,omitempty"`
	EtherTyp string    `json:"ethertype,omitempty"`
	tuple    string
}

// devices names ifindexes and the endpoints behind them, re-reading the
// endpoints at most once a second when an index is new to it.
type devices struct {
	root  string
	names map[uint32]string
	pods  map[uint32]netip.Addr
	read  time.Time
}

func (d *devices) lookup(ifindex uint32) (string, netip.Addr) {
	if _, ok := d.names[ifindex]; !ok && time.Since(d.read) > time.Second {
		d.refresh()
	}
	return d.names[ifindex], d.pods[ifindex]
}

func (d *devices) refresh() {
	d.read = time.Now()
	d.names, d.pods = map[uint32]string{}, map[uint32]netip.Addr{}
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			d.names[uint32(i.Index)] = i.Name
		}
	}
	if list, err := maps.ListEndpoints(d.root); err == nil {
		for _, e := range list {
			d.pods[e.Info.Ifindex] = e.IP
		}
	}
}

func newMonitorEvent(e maps.DecodedEvent, devs *devices) monitorEvent {
	m := monitorEvent{Time: e.Time.UTC(), Type: e.Kind, Reason: e.Reason.String(), Hook: e.Hook.String(),
		Ifindex: e.Ifindex, Len: e.Len, tuple: e.Tuple.String()}
	name, pod := devs.lookup(e.Ifindex)
	m.Device = name
	if pod.IsValid() {
		m.Pod = pod.String()
	}
	if !e.Tuple.IsZero() {
		m.Proto, m.Src, m.Dst = e.Tuple.ProtoName(), e.Tuple.Src.String(), e.Tuple.Dst.String()
		m.SrcPort, m.DstPort = e.Tuple.SrcPort, e.Tuple.DstPort
	} else {
		m.EtherTyp = fmt.Sprintf("0x%04x", e.Ethertype)
	}
	if !e.Orig.IsZero() && e.Orig != e.Tuple {
		m.OrigSrc = netip.AddrPortFrom(e.Orig.Src, e.Orig.SrcPort).String()
		m.OrigDst = netip.AddrPortFrom(e.Orig.Dst, e.Orig.DstPort).String()
	}
	return m
}

func (m monitorEvent) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s", m.Time.Format("15:04:05.000000"), m.Type, m.Reason, m.Hook)
	dev := m.Device
	if dev == "" {
		dev = fmt.Sprintf("ifindex %d", m.Ifindex)
	}
	if m.Pod != "" {
		dev += " (pod " + m.Pod + ")"
	}
	fmt.Fprintf(&b, " %s", dev)
	if m.tuple != "" {
		fmt.Fprintf(&b, " %s", m.tuple)
	} else {
		fmt.Fprintf(&b, " ethertype %s", m.EtherTyp)
	}
	if m.OrigSrc != "" {
		fmt.Fprintf(&b, " (was %s -> %s)", m.OrigSrc, m.OrigDst)
	}
	fmt.Fprintf(&b, " len %d", m.Len)
	return b.String()
}

// parseTrace reads --trace: all, a pod of the node (its address or
// host-side device: the packets on its veth and from or to its address),
// or any IPv4 address.
func parseTrace(root, sel string, sample uint32) (maps.Trace, error) {
	switch sel {
	case "":
		return maps.Trace{}, nil
	case "all":
		return maps.Trace{All: true, Sample: sample}, nil
	}
	pod := monitorFilter{pod: sel}
	if err := pod.resolvePod(root); err == nil {
		return maps.Trace{Ifindex: pod.podIfx, Addr: pod.podAddr, Sample: sample}, nil
	}
	a, err := netip.ParseAddr(sel)
	if err != nil || !a.Unmap().Is4() {
		return maps.Trace{}, fmt.Errorf("--trace %q: want all, a pod of this node (address or host-side device) or an IPv4 address", sel)
	}
	return maps.Trace{Addr: a.Unmap(), Sample: sample}, nil
}

// monitor prints the events that match f until ctx ends, with tracing on
// as tr says while it runs (switched through the node recorded in
// stateDir: switching reloads its programs).
func monitor(ctx context.Context, root, stateDir string, f monitorFilter, tr maps.Trace, asJSON bool, out, log io.Writer) error {
	unlock, err := lockMonitor(root)
	if err != nil {
		return err
	}
	defer unlock()
	r, err := maps.OpenEvents(root)
	if err != nil {
		return err
	}
	// Holding the lock, this is the only monitor: tracing found on was
	// left by one that did not exit cleanly.
	stale := false
	if cfg, err := maps.ReadEventConfig(root); err == nil && maps.TraceOf(cfg).On() && !tr.On() {
		fmt.Fprintln(log, "tracing was left on by a monitor that did not exit cleanly: switching it off")
		stale = true
	}
	if tr.On() || stale {
		if err := switchTracing(root, stateDir, tr); err != nil {
			r.Close()
			return err
		}
	}
	if tr.On() {
		defer func() {
			if err := switchTracing(root, stateDir, maps.Trace{}); err != nil {
				fmt.Fprintf(log, "switch tracing off: %v\n", err)
			}
		}()
		fmt.Fprintf(log, "tracing %s, one packet in %d\n", describeTrace(tr), max(tr.Sample, 1))
	}
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	devs := &devices{root: root}
	devs.refresh()
	fmt.Fprintf(log, "reading the drop events of %s until interrupted\n", root)
	enc := json.NewEncoder(out)
	for {
		rec, err := r.Read()
		if errors.Is(err, ringbuf.ErrClosed) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		e, err := maps.DecodeEvent(rec.RawSample)
		if err != nil {
			return err
		}
		if !f.match(e) {
			continue
		}
		m := newMonitorEvent(e, devs)
		if asJSON {
			err = enc.Encode(m)
		} else {
			_, err = fmt.Fprintln(out, m.text())
		}
		if err != nil {
			return err
		}
	}
}

// switchTracing sets tracing on the node recorded in stateDir, which must
// be the node whose pins are under root.
func switchTracing(root, stateDir string, t maps.Trace) error {
	c, err := loader.ReadNodeConfig(stateDir)
	if err != nil {
		return fmt.Errorf("tracing switches through the node's configuration: %w", err)
	}
	if filepath.Clean(c.PinRoot) != filepath.Clean(root) {
		return fmt.Errorf("the node recorded in %s pins under %s, not %s: give --state-dir and --pin-root of one node", stateDir, c.PinRoot, root)
	}
	return loader.SetTracing(stateDir, t)
}

func describeTrace(t maps.Trace) string {
	switch {
	case t.All:
		return "every packet"
	case t.Ifindex != 0:
		return fmt.Sprintf("the packets on ifindex %d and from or to %s", t.Ifindex, t.Addr)
	}
	return "the packets from or to " + t.Addr.String()
}

// lockMonitor makes this the only monitor of the node's events: a ring
// buffer's readers share one position, so two would each miss events.
func lockMonitor(root string) (func(), error) {
	dir := "/run/podpath"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("monitor lock: %w", err)
	}
	name := "monitor" + strings.ReplaceAll(filepath.Clean(root), "/", "_") + ".lock"
	path := filepath.Join(dir, name)
	fh, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("monitor lock: %w", err)
	}
	if err := unix.Flock(int(fh.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		fh.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another podpath monitor is reading the events of %s (lock %s): one reader at a time, or each would miss events", root, path)
		}
		return nil, fmt.Errorf("monitor lock %s: %w", path, err)
	}
	return func() { fh.Close() }, nil
}
