package fuzz_test

// One program run on one packet, and what must hold of every run: an
// allowed verdict, exactly one packet counted under the program's hook with
// a reason that says whether it was dropped, the frame's length kept (only
// a rejection builds a new packet), and checksums that still verify.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/csum"
	"github.com/podpath/podpath/internal/packet"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// program is what the checks know of each program: its hook's name in the
// counters and the verdicts it may return.
var programs = map[string]struct {
	hook     string
	verdicts []uint32
}{
	maps.ProgFromPod:    {"from_pod", []uint32{progrun.TCActOK, progrun.TCActShot, progrun.TCActRedirect}},
	maps.ProgToPod:      {"to_pod", []uint32{progrun.TCActOK, progrun.TCActShot}},
	maps.ProgFromNetdev: {"from_netdev", []uint32{progrun.TCActOK, progrun.TCActShot, progrun.TCActRedirect}},
	maps.ProgToNetdev:   {"to_netdev", []uint32{progrun.TCActOK, progrun.TCActShot}},
	maps.ProgXDPNetdev:  {"xdp", []uint32{progrun.XDPPass, progrun.XDPDrop}},
}

// hop is a program a packet meets: tc programs at ingress learn the device
// it arrived on.
type hop struct {
	Prog    string
	Ingress uint32
}

func (h hop) String() string {
	if h.Ingress != 0 {
		return fmt.Sprintf("%s (ifindex %d)", h.Prog, h.Ingress)
	}
	return h.Prog
}

// result is what a program did with a packet.
type result struct {
	hop
	Verdict uint32
	Reason  maps.Reason
	Out     []byte
}

func (r result) dropped() bool {
	if r.Prog == maps.ProgXDPNetdev {
		return r.Verdict == progrun.XDPDrop
	}
	return r.Verdict == progrun.TCActShot
}

// leaves tells whether the packet goes on. drop_fib_failed counts too: the
// packet was translated and only lacked a route, which this test's network
// namespace may not have.
func (r result) leaves() bool {
	return !r.dropped() || r.Reason.String() == "drop_fib_failed"
}

// run runs frame through h's program and checks the run. A kernel whose
// BPF_PROG_RUN cannot present the packet as h needs skips the input.
func (n *node) run(t *testing.T, h hop, frame []byte) result {
	t.Helper()
	before := n.counted(t)
	var err error
	r := result{hop: h}
	if h.Prog == maps.ProgXDPNetdev {
		r.Verdict, r.Out, err = progrun.RunXDP(n.Programs[h.Prog], frame)
	} else {
		r.Verdict, r.Out, err = progrun.RunTC(n.Programs[h.Prog], progrun.SkbContext{IngressIfindex: h.Ingress}, frame)
	}
	if errors.Is(err, progrun.ErrNoIngressIfindex) || errors.Is(err, progrun.ErrNoXDPContext) {
		t.Skipf("%s: %v", h, err)
	}
	if errors.Is(err, unix.EINVAL) && cutInsideL3Header(frame) {
		t.Skipf("%s: BPF_PROG_RUN builds no skb of a %d-byte frame cut inside its IPv4 or IPv6 header "+
			"(test/datapath's TestTruncatedIPv4HeaderFromPod sends such frames over a veth)", h, len(frame))
	}
	if err != nil {
		t.Fatalf("run %s: %v", h, err)
	}
	r.Reason = n.countedOnce(t, h, before)
	n.checkEvents(t, r)
	if !slices.Contains(programs[h.Prog].verdicts, r.Verdict) {
		t.Errorf("%s: verdict %d, allowed are %v", h, r.Verdict, programs[h.Prog].verdicts)
	}
	if r.dropped() != r.Reason.IsDrop() {
		t.Errorf("%s: verdict %d counted as %s", h, r.Verdict, r.Reason)
	}
	rebuilt := r.Reason.String() == "svc_reject"
	if len(r.Out) != len(frame) && !rebuilt {
		t.Errorf("%s (%s): %d bytes in, %d out", h, r.Reason, len(frame), len(r.Out))
	}
	if r.leaves() {
		if err := checkChecksums(frame, r.Out, rebuilt); err != nil {
			t.Errorf("%s (%s): %v\n in  % x\n out % x", h, r.Reason, err, frame, r.Out)
		}
	}
	return r
}

// checkEvents reads the drop events the run raised: one for a drop, with
// its reason, hook and the packet's length as dropped; none otherwise.
func (n *node) checkEvents(t *testing.T, r result) {
	t.Helper()
	var evs []maps.DecodedEvent
	for {
		n.events.SetDeadline(time.Now())
		rec, err := n.events.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("read events: %v", err)
		}
		e, err := maps.DecodeEvent(rec.RawSample)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e)
	}
	switch {
	case !r.dropped() && len(evs) != 0:
		t.Errorf("%s (%s): not dropped, yet %d drop events: %+v", r.hop, r.Reason, len(evs), evs)
	case r.dropped() && len(evs) != 1:
		t.Errorf("%s (%s): dropped, %d drop events, want 1: %+v", r.hop, r.Reason, len(evs), evs)
	case r.dropped():
		e := evs[0]
		if e.Kind != "drop" || e.Reason != r.Reason || e.Hook.String() != programs[r.Prog].hook || e.Len != uint32(len(r.Out)) {
			t.Errorf("%s: dropped as %s, %d bytes; event %s %s at %s, %d bytes", r.hop, r.Reason, len(r.Out), e.Kind, e.Reason, e.Hook, e.Len)
		}
	}
}

// cutInsideL3Header tells whether an IPv4 or IPv6 frame ends before its
// fixed header does.
func cutInsideL3Header(frame []byte) bool {
	if len(frame) < ethHeaderLen {
		return false
	}
	switch binary.BigEndian.Uint16(frame[12:]) {
	case packet.EthPIPv4:
		return len(frame) < ethHeaderLen+20
	case packet.EthPIPv6:
		return len(frame) < ethHeaderLen+40
	}
	return false
}

// counted is the packets counted so far under each (reason, hook).
func (n *node) counted(t *testing.T) map[maps.CounterKey]uint64 {
	t.Helper()
	cs, err := maps.ReadCounters(n.Maps[maps.MapCounters])
	if err != nil {
		t.Fatal(err)
	}
	out := map[maps.CounterKey]uint64{}
	for _, c := range cs {
		out[maps.CounterKey{Reason: uint16(c.Reason), Hook: uint8(c.Hook)}] = c.Packets
	}
	return out
}

// countedOnce checks that the run counted exactly one packet, under h's
// hook and a reason, and returns the reason.
func (n *node) countedOnce(t *testing.T, h hop, before map[maps.CounterKey]uint64) maps.Reason {
	t.Helper()
	var got []string
	var reason maps.Reason
	for k, packets := range n.counted(t) {
		for range packets - before[k] {
			reason = maps.Reason(k.Reason)
			got = append(got, maps.Hook(k.Hook).String()+"/"+reason.String())
		}
	}
	if len(got) != 1 || got[0] != programs[h.Prog].hook+"/"+reason.String() || reason == 0 {
		t.Errorf("%s: counted %v, want one packet under hook %s with a reason", h, got, programs[h.Prog].hook)
	}
	return reason
}

// checkChecksums checks the checksums of the IPv4 packet in out, which a
// program made of in. A rebuilt packet (an ICMP error in place of the
// packet) must verify. Otherwise each checksum must have changed exactly as
// much as the bytes it covers (sameSums): one that verified still does, one
// that was wrong stays as wrong as it came, and UDP without a checksum (0)
// has none still. Incremental updates keep that; a checksum computed afresh would
// not, and would corrupt a CHECKSUM_PARTIAL packet, whose field holds only
// the pseudo-header sum the device completes.
func checkChecksums(in, out []byte, rebuilt bool) error {
	o, ok := parseIPv4(out)
	if !ok {
		return nil
	}
	if rebuilt {
		if !csum.Valid(o.Header, 0) {
			return errors.New("rebuilt packet: IPv4 header checksum does not verify")
		}
		if o.Proto != protoICMP || !csum.Valid(o.Payload, 0) {
			return errors.New("rebuilt packet: not ICMP, or its checksum does not verify")
		}
		return nil
	}
	i, ok := parseIPv4(in)
	if !ok {
		return errors.New("the frame became IPv4")
	}
	return sameSums(i, o)
}

// sameSums checks that each checksum of packet o changed from packet i's
// by exactly as much as the bytes it covers, in an ICMP error's quote too.
func sameSums(i, o ipv4Packet) error {
	if len(i.Header) != len(o.Header) || len(i.Payload) != len(o.Payload) || i.Proto != o.Proto {
		return errors.New("the IPv4 packet changed shape")
	}
	if !sameSum(residue(i.Header, 0), residue(o.Header, 0)) {
		return errors.New("IPv4 header checksum changed by other than its header did")
	}
	if o.Later {
		return nil // no L4 header
	}
	switch {
	case o.Proto == protoICMP && len(o.Payload) >= 4:
		if !sameSum(residue(i.Payload, 0), residue(o.Payload, 0)) {
			return errors.New("ICMP checksum changed by other than the message did")
		}
		qi, ok := quoted(i.Payload)
		if qo, ok2 := quoted(o.Payload); ok && ok2 {
			if err := sameSums(qi, qo); err != nil {
				return fmt.Errorf("in the quoted packet: %w", err)
			}
		}
		return nil
	case o.Proto == protoUDP && len(o.Payload) >= 8:
		was, is := binary.BigEndian.Uint16(i.Payload[6:]), binary.BigEndian.Uint16(o.Payload[6:])
		if (was == 0) != (is == 0) {
			return fmt.Errorf("UDP checksum %#04x became %#04x: zero means none", was, is)
		}
		if is == 0 {
			return nil
		}
	case o.Proto == protoTCP && len(o.Payload) >= 18:
	default:
		return nil
	}
	// A quote's L4 part may be cut short: the sum over what there is
	// changes as much as the whole's would.
	pi := csum.Pseudo4(i.Src, i.Dst, i.Proto, len(i.Payload))
	po := csum.Pseudo4(o.Src, o.Dst, o.Proto, len(o.Payload))
	if !sameSum(residue(i.Payload, pi), residue(o.Payload, po)) {
		return errors.New("L4 checksum changed by other than the segment and pseudo-header did")
	}
	return nil
}

// residue is the one's complement sum of b over a partial sum: 0xffff (or
// its twin 0) when a checksum inside b verifies.
func residue(b []byte, initial uint32) uint16 { return csum.Fold(csum.Sum(b, initial)) }

// sameSum compares one's complement sums, where 0 and 0xffff are one number.
func sameSum(a, b uint16) bool {
	return a == b || (a == 0 || a == 0xffff) && (b == 0 || b == 0xffff)
}
