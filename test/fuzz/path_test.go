package fuzz_test

// A packet's way through the node, program after program, and the answer's
// way back.

import (
	"encoding/binary"
	"net"
	"slices"
	"testing"

	"github.com/podpath/podpath/internal/csum"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/maps"
)

// follow runs frame through h's program and on, the way the node sends it
// (docs/architecture.md): xdp_netdev passes to from_netdev, and what a tc
// ingress program hands to the stack is routed there: to a pod through
// to_pod, to the node itself, or out through to_netdev. Every run is
// checked; the last result is the packet as it is delivered or leaves.
func (n *node) follow(t *testing.T, h hop, frame []byte) []result {
	t.Helper()
	var path []result
	for {
		r := n.run(t, h, frame)
		path = append(path, r)
		switch {
		case r.dropped():
			return path
		case h.Prog == maps.ProgXDPNetdev:
			h, frame = hop{maps.ProgFromNetdev, uplinkIfindex}, r.Out
		case r.Verdict == progrun.TCActOK && (h.Prog == maps.ProgFromPod || h.Prog == maps.ProgFromNetdev):
			var ok bool
			if h, frame, ok = routed(r.Out); !ok {
				return path
			}
		default:
			return path
		}
	}
}

// routed is where the node's stack sends an IPv4 packet: into a pod
// through to_pod, or out of the uplink through to_netdev, the frame
// addressed for that link; false for what it keeps (the node's own
// address, not IPv4).
func routed(frame []byte) (hop, []byte, bool) {
	p, ok := parseIPv4(frame)
	if !ok || p.Dst == nodeIP {
		return hop{}, nil, false
	}
	if to, ok := podWith(p.Dst); ok {
		return hop{Prog: maps.ProgToPod}, readdressed(frame, to.MAC, to.NodeMAC), true
	}
	return hop{Prog: maps.ProgToNetdev}, readdressed(frame, gatewayMAC, uplinkMAC), true
}

// readdressed is frame with other Ethernet addresses.
func readdressed(frame []byte, dst, src net.HardwareAddr) []byte {
	b := slices.Clone(frame)
	copy(b[0:6], dst)
	copy(b[6:12], src)
	return b
}

// checkAnswer checks that a translated packet's answer is translated back:
// the peer the packet reached answers the tuple it saw, the answer goes the
// way the node sends it, and must arrive as the answer to the tuple the
// packet was sent with. A service's backend must answer as the frontend
// the client spoke to; a masqueraded flow's peer reaches the pod.
func (n *node) checkAnswer(t *testing.T, sent []byte, path []result) {
	t.Helper()
	last := path[len(path)-1]
	in, ok := tupleOf(sent)
	out, ok2 := tupleOf(last.Out)
	if !ok || !ok2 || in == out || !last.leaves() || rejected(path) {
		return
	}
	answer := out.reversed()
	h, frame, ok := sentBy(answer)
	if !ok {
		return
	}
	back := n.follow(t, h, frame)
	got := back[len(back)-1]
	if g, ok := tupleOf(got.Out); !ok || g != in.reversed() || !got.leaves() {
		t.Errorf("sent %s, it left as %s (%s);\nthe answer %s came back as %s (%s at %s), want %s",
			in, out, last.Reason, answer, g, got.Reason, got.hop, in.reversed())
	}
}

// sentBy is where a packet of t enters the node: from a local pod through
// from_pod, from the node itself through its stack, from anywhere else
// through the uplink.
func sentBy(t tuple) (hop, []byte, bool) {
	src := t.Src.Addr()
	if p, ok := podWith(src); ok {
		return hop{maps.ProgFromPod, p.Ifindex}, t.frame(p.NodeMAC, p.MAC), true
	}
	if src == nodeIP {
		return routed(t.frame(gatewayMAC, uplinkMAC))
	}
	return hop{Prog: maps.ProgXDPNetdev}, t.frame(uplinkMAC, gatewayMAC), true
}

func rejected(path []result) bool {
	return slices.ContainsFunc(path, func(r result) bool { return r.Reason.String() == "svc_reject" })
}

// checkLaterFragment sends, after a datagram's first fragment went its
// way, a later fragment of it, which must go the same way and end up with
// the same addresses: the first fragment's translation (lib/frag.h).
func (n *node) checkLaterFragment(t *testing.T, h hop, sent []byte, path []result) {
	t.Helper()
	p, ok := parseIPv4(sent)
	if _, flow := tupleOf(sent); !ok || !p.First || !flow || rejected(path) {
		return
	}
	later := slices.Clone(sent)
	binary.BigEndian.PutUint16(later[ethHeaderLen+6:], 185) // offset 1480, the last fragment
	later[ethHeaderLen+10], later[ethHeaderLen+11] = 0, 0
	binary.BigEndian.PutUint16(later[ethHeaderLen+10:], csum.Checksum(later[ethHeaderLen:ethHeaderLen+len(p.Header)], 0))

	back := n.follow(t, h, later)
	first, got := path[len(path)-1], back[len(back)-1]
	f, _ := parseIPv4(first.Out)
	g, _ := parseIPv4(got.Out)
	if !slices.Equal(programsOf(path), programsOf(back)) || first.leaves() != got.leaves() ||
		first.leaves() && (f.Src != g.Src || f.Dst != g.Dst) {
		t.Errorf("the first fragment went %v and left %s -> %s (%s);\na later one went %v and left %s -> %s (%s)",
			programsOf(path), f.Src, f.Dst, first.Reason, programsOf(back), g.Src, g.Dst, got.Reason)
	}
}

func programsOf(path []result) []string {
	var progs []string
	for _, r := range path {
		progs = append(progs, r.Prog)
	}
	return progs
}
