// Package fuzz_test feeds mutated frames to every program that takes
// frames (from_pod, to_pod, from_netdev, to_netdev, xdp_netdev; the socket
// programs take none) with BPF_PROG_RUN, on a node with pods, services,
// SNAT and tracked flows (node_test.go), and checks what must hold of any
// packet:
//   - each program returns a verdict it may return and counts the packet
//     exactly once, under its hook and a reason: a drop reason for a drop,
//     another for anything else, and raises one drop event naming that
//     reason, the hook and the packet's length for a drop, none otherwise
//     (run_test.go);
//   - no packet leaves with a checksum made wrong: each changes exactly as
//     much as the bytes it covers, and UDP without one keeps none;
//   - a packet goes on the way the node sends it, and when it arrives
//     translated, its answer, sent back the way the peer would, arrives
//     as the answer to the tuple the packet was sent with (path_test.go);
//   - a frame from the network ends up the same through xdp_netdev and
//     from_netdev as through from_netdev alone (FuzzXDPNetdev).
//
// `go test` runs the seed corpus (testdata/fuzz, written by TestSeedCorpus);
// `make fuzz` fuzzes each target in turn. Go's fuzzer is guided by the
// coverage of Go code only, to which the programs are opaque: the seeds,
// one or more for each path, do most of the steering. Needs root.
package fuzz_test

import (
	"bytes"
	"testing"

	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/maps"
)

// Frames enter as pod A, B or C sends them (the veth is the one of the
// pod whose MAC is the source; pod A's for any other MAC), and go on.
func FuzzFromPod(f *testing.F) {
	requireIngressIfindex(f)
	fuzzAt(f, func(frame []byte) hop {
		veth := podA.Ifindex
		for _, p := range pods {
			if len(frame) >= 12 && string(frame[6:12]) == string(p.MAC) {
				veth = p.Ifindex
			}
		}
		return hop{maps.ProgFromPod, veth}
	}, nil)
}

// Frames the node's stack routes into a pod.
func FuzzToPod(f *testing.F) {
	fuzzAt(f, func([]byte) hop { return hop{Prog: maps.ProgToPod} }, nil)
}

// Frames from the network at the uplink's tc ingress, as on a node
// without XDP or after XDP passed them untouched.
func FuzzFromNetdev(f *testing.F) {
	requireIngressIfindex(f)
	fuzzAt(f, func([]byte) hop { return hop{maps.ProgFromNetdev, uplinkIfindex} }, nil)
}

// Frames leaving through the uplink.
func FuzzToNetdev(f *testing.F) {
	fuzzAt(f, func([]byte) hop { return hop{Prog: maps.ProgToNetdev} }, nil)
}

// Frames from the network at the uplink's XDP hook, then tc ingress.
// xdp_netdev translates what from_netdev would, as from_netdev would: each
// frame must end up the same as through from_netdev alone.
func FuzzXDPNetdev(f *testing.F) {
	fuzzAt(f, func([]byte) hop { return hop{Prog: maps.ProgXDPNetdev} }, func(t *testing.T, n *node, frame []byte, viaXDP []result) {
		if len(frame) < ethHeaderLen || cutInsideL3Header(frame) {
			return // tc cannot be shown these (see run)
		}
		// from_netdev after XDP (XDP itself when it dropped the frame)
		// against from_netdev alone; what follows is the same either way.
		x := viaXDP[min(1, len(viaXDP)-1)]
		n.reset(t)
		tc := n.run(t, hop{maps.ProgFromNetdev, uplinkIfindex}, frame)
		if x.leaves() != tc.leaves() || x.Reason != tc.Reason || x.leaves() && !bytes.Equal(x.Out, tc.Out) {
			t.Errorf("through XDP: %s at %s\n % x\nthrough from_netdev alone: %s at %s\n % x",
				x.Reason, x.hop, x.Out, tc.Reason, tc.hop, tc.Out)
		}
	})
}

// maxFrame is the largest frame a 1500-byte MTU device delivers; larger
// inputs are not run (BPF_PROG_RUN takes not much more than that either).
const maxFrame = ethHeaderLen + 1500

// fuzzAt fuzzes frames entering at the hop entry picks for each: every
// input starts from the node's state as node_test.go seeds it. also, if
// given, checks more of each input and the way it went.
func fuzzAt(f *testing.F, entry func(frame []byte) hop, also func(t *testing.T, n *node, frame []byte, path []result)) {
	n := loadNode(f)
	f.Fuzz(func(t *testing.T, frame []byte) {
		h := entry(frame)
		// Below 14 bytes only XDP can be shown a frame: tc's
		// BPF_PROG_RUN refuses one, and no device delivers one.
		if len(frame) > maxFrame || len(frame) < ethHeaderLen && h.Prog != maps.ProgXDPNetdev {
			return
		}
		n.reset(t)
		path := n.follow(t, h, frame)
		n.checkLaterFragment(t, h, frame, path)
		n.checkAnswer(t, frame, path)
		if also != nil {
			also(t, n, frame, path)
		}
	})
}

// requireIngressIfindex skips a target whose packets arrive on a device
// (tc ingress) on a kernel whose BPF_PROG_RUN cannot say which.
func requireIngressIfindex(f *testing.F) {
	f.Helper()
	progrun.RequireIngressIfindex(f, "the other targets skip the inputs whose way leads through tc ingress")
}
