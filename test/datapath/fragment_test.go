package datapath_test

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/podpath/podpath/internal/csum"
)

// fragSize is the payload of each fragment but the last: what a 1500-byte
// MTU leaves after a 20-byte IPv4 header.
const fragSize = 1480

// fragmented splits f's IPv4 datagram as a sender's stack does: the first
// fragment carries the L4 header (its checksum over the whole datagram),
// every fragment the IPv4 header with its offset and More Fragments flag, a
// fresh total length and header checksum.
func fragmented(f flow) [][]byte {
	l4 := f.l4()
	var out [][]byte
	for off := 0; off < len(l4); off += fragSize {
		end := min(off+fragSize, len(l4))
		ip := ipv4(ipv4Header{ID: f.ID, TTL: f.TTL, Protocol: f.Proto, Src: f.Src, Dst: f.Dst}, l4[off:end])
		field := uint16(off / 8)
		if end < len(l4) {
			field |= 0x2000
		}
		binary.BigEndian.PutUint16(ip[6:], field)
		binary.BigEndian.PutUint16(ip[10:], 0)
		binary.BigEndian.PutUint16(ip[10:], csum.Checksum(ip[:ipv4HeaderLen], 0))
		out = append(out, ip)
	}
	return out
}

// bigDatagram is a UDP datagram of 3,000 bytes of payload: three fragments.
func bigDatagram(src, dst pod, dport uint16) flow {
	f := udpFlow(src.IP, 40500, vip, dport)
	f.Payload = []byte(strings.Repeat("0123456789abcdef", 3000/16) + "01234567")
	return f
}

// A UDP datagram to a ClusterIP larger than the pod's MTU leaves the pod as
// fragments. The first carries the ports: it is translated as any packet of
// the flow. The later ones carry none: they get the same destination (and
// only the IPv4 header checksum changes; the UDP checksum in the first
// fragment covers them). In order or not, every fragment reaches the
// backend, byte for byte what a sender of the translated datagram would
// send; the backend's fragmented reply comes back from the frontend. A
// later fragment that comes before its first one cannot be translated and
// is dropped with its own reason, and a datagram whose first fragment
// never comes loses every fragment.
func TestFragmentsThroughAClusterIP(t *testing.T) {
	tests := []struct {
		name  string
		order []int // indexes into the fragments, as sent
		want  []int // those delivered, in the order sent
	}{
		{name: "in order", order: []int{0, 1, 2}, want: []int{0, 1, 2}},
		{name: "later ones swapped", order: []int{0, 2, 1}, want: []int{0, 2, 1}},
		{name: "a later one before the first", order: []int{1, 0, 2}, want: []int{0, 2}},
		{name: "first missing", order: []int{1, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newServiceDatapath(t, clusterIP(protoUDP, backendB))
			req := bigDatagram(podA, podB, vipPort)
			sent := fragmented(req)
			if len(sent) != 3 {
				t.Fatalf("%d fragments, want 3", len(sent))
			}
			translated := req.to(podB.IP, backendPort)
			translated.TTL--
			want := fragmented(translated)

			var got []int
			drops := 0
			for _, i := range tc.order {
				r := d.send(t, podA, ether(podA.NodeMAC, podA.MAC, ethPIPv4, sent[i]))
				if r.verdict == tcActShot {
					drops++
					continue
				}
				got = append(got, i)
				expectVerdict(t, r, tcActRedirect)
				expectBytes(t, fmt.Sprintf("fragment %d", i), r.out, ether(podB.MAC, podB.NodeMAC, ethPIPv4, want[i]))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("fragments delivered %v, want %v", got, tc.want)
			}
			wantCounts := counts{}
			if len(tc.want) > 0 {
				wantCounts["from_pod/forward_local"] = bytesOf(sent, tc.want)
			}
			if drops > 0 {
				wantCounts["from_pod/drop_frag_unknown"] = bytesOf(sent, without(tc.order, tc.want))
			}
			d.expectCounts(t, wantCounts)
			if tc.want == nil || tc.want[0] != 0 {
				return
			}

			// The reply, 3,000 bytes too, fragmented by the backend.
			before := d.counts(t)
			ans := req.to(podB.IP, backendPort).answer(0)
			ans.Payload = []byte(strings.Repeat("reply ", 500))
			back := ans.from(vip, vipPort)
			back.TTL--
			wantBack := fragmented(back)
			for i, frag := range fragmented(ans) {
				r := d.send(t, podB, ether(podB.NodeMAC, podB.MAC, ethPIPv4, frag))
				expectVerdict(t, r, tcActRedirect)
				expectBytes(t, fmt.Sprintf("reply fragment %d", i), r.out, ether(podA.MAC, podA.NodeMAC, ethPIPv4, wantBack[i]))
			}
			if after := d.counts(t); after["from_pod/forward_local"].Packets != before["from_pod/forward_local"].Packets+3 {
				t.Errorf("counters after the reply: %v", after)
			}
		})
	}
}

// Fragments between two pods are nobody's translation: they are delivered
// as they are, the later ones after their first.
func TestFragmentsBetweenPods(t *testing.T) {
	d := newServiceDatapath(t, clusterIP(protoUDP, backendB))
	f := bigDatagram(podA, podB, 9000).to(podB.IP, 9000)
	routed := f
	routed.TTL--
	want := fragmented(routed)
	for i, frag := range fragmented(f) {
		r := d.send(t, podA, ether(podA.NodeMAC, podA.MAC, ethPIPv4, frag))
		expectVerdict(t, r, tcActRedirect)
		expectBytes(t, fmt.Sprintf("fragment %d", i), r.out, ether(podB.MAC, podB.NodeMAC, ethPIPv4, want[i]))
	}
	if n := len(d.ctAll(t)); n != 0 {
		t.Errorf("%d conntrack entries, want none", n)
	}
}

// A pod's datagram to the internet larger than its MTU is masqueraded whole:
// the first fragment gets the node's address and a port, the later ones
// the node's address, and the reply's fragments all get the pod's address
// back. A later fragment of a pod's datagram whose first fragment was not
// seen would leave with the pod's address: it is dropped with its own
// reason. The node's own fragments, and fragments to the node's address
// that belong to no masqueraded datagram, are not touched.
func TestFragmentsMasqueraded(t *testing.T) {
	d := newSNATDatapath(t, snatSetup{})
	req := udpFlow(podA.IP, podPort, serverIP, serverPort)
	req.Payload = []byte(strings.Repeat("fragmented datagram ", 150))
	sent := fragmented(req)
	first := d.egress(t, leaving(sent[0]))
	expectVerdict(t, first, tcActOK)
	port := d.allocatedPort(t, first.out)
	masq := fragmented(req.from(masqIP, port))
	for i := range sent {
		r := first
		if i > 0 {
			r = d.egress(t, leaving(sent[i]))
		}
		expectVerdict(t, r, tcActOK)
		expectBytes(t, fmt.Sprintf("fragment %d", i), r.out, leaving(masq[i]))
	}

	ans := req.from(masqIP, port).answer(0)
	ans.Payload = []byte(strings.Repeat("answer ", 500))
	back := ans.to(podA.IP, podPort)
	back.TTL--
	wantBack := fragmented(back)
	for i, frag := range fragmented(ans) {
		r := d.ingress(t, arriving(frag))
		expectVerdict(t, r, tcActRedirect)
		expectBytes(t, fmt.Sprintf("reply fragment %d", i), r.out, delivered(podA, wantBack[i]))
	}
	d.expectCounts(t, counts{
		"to_netdev/snat":            bytesOf(sent, []int{0, 1, 2}),
		"from_netdev/forward_local": bytesOf(fragmented(ans), []int{0, 1, 2}),
	})

	// Later fragments without their first.
	before := d.counts(t)
	other := req
	other.ID++
	orphan := fragmented(other)[1]
	if r := d.egress(t, leaving(orphan)); r.verdict != tcActShot {
		t.Errorf("a pod's later fragment without its first: verdict %d, want TC_ACT_SHOT", r.verdict)
	}
	nodeOwn := fragmented(req.from(masqIP, 7000))[1]
	r := d.egress(t, leaving(nodeOwn))
	expectVerdict(t, r, tcActOK)
	expectBytes(t, "the node's own fragment", r.out, leaving(nodeOwn))
	forNode := ans.to(masqIP, 7000)
	forNode.ID += 100 // another datagram
	toNode := fragmented(forNode)[1]
	r = d.ingress(t, arriving(toNode))
	expectVerdict(t, r, tcActOK)
	expectBytes(t, "a fragment for the node", r.out, arriving(toNode))
	after := d.counts(t)
	for k, want := range map[string]uint64{"to_netdev/drop_frag_unknown": 1, "to_netdev/to_stack": 1, "from_netdev/to_stack": 1} {
		if got := after[k].Packets - before[k].Packets; got != want {
			t.Errorf("%s: %d packets, want %d", k, got, want)
		}
	}
}

// bytesOf counts the packets and bytes of frames[i] for i in idx, as a
// counter sees them with an Ethernet header.
func bytesOf(frames [][]byte, idx []int) count {
	c := count{Packets: uint64(len(idx))}
	for _, i := range idx {
		c.Bytes += uint64(ethHeaderLen + len(frames[i]))
	}
	return c
}

// without is all but the elements of some, in order.
func without(all, some []int) []int {
	var out []int
	for _, x := range all {
		found := false
		for _, y := range some {
			found = found || x == y
		}
		if !found {
			out = append(out, x)
		}
	}
	return out
}
