package datapath_test

import (
	"testing"

	"github.com/podpath/podpath/maps"
)

// putClosedMapping writes a mapping of pod B's port sport to server:443 on
// port, both halves marked with the closing flags as nat_sync_partner
// leaves them, expiring after the closing lifetime.
func (d *snatDatapath) putClosedMapping(t *testing.T, sport, port uint16, flags uint8) {
	t.Helper()
	now := monotonic(t)
	d.putMapping(t, protoTCP, podB.IP, sport, serverIP, serverPort, port, now+uint64(lifetimeTCPClose))
	for _, k := range []maps.CtKey{
		natKey(protoTCP, podB.IP, sport, serverIP, serverPort),
		natKey(protoTCP, serverIP, serverPort, masqIP, port),
	} {
		e := d.mappings(t)[k]
		e.TcpFlags = tcpSYN | tcpACK | flags
		if err := d.snat.Put(&k, &e); err != nil {
			t.Fatal(err)
		}
	}
}

// A reset TCP connection takes no more packets, so its mapping gives its
// port to the next flow that needs one at once, not after the closing
// lifetime: with three of four ports held by live connections and the
// fourth by one reset 0 s ago, a new flow gets the fourth port, the old
// flow's forward half is deleted, and reused_reset counts it. A port whose
// connection closed with FIN keeps it for the closing lifetime (the side
// that closed first may still acknowledge a retransmitted FIN through it):
// with the fourth held that way, the new flow is refused.
func TestSNATResetMappingTakenOver(t *testing.T) {
	for _, tc := range []struct {
		name   string
		closed uint8
		reused bool
	}{
		{"reset", tcpRST, true},
		{"reset by the server with ACK", tcpRST | tcpACK, true},
		{"closed with FIN", tcpFIN | tcpACK, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, fourPorts)
			live := monotonic(t) + uint64(lifetimeTCPEstablished)
			const closed = fourPortsMin + 1
			want := map[maps.CtKey]maps.NatEntry{}
			for port := uint16(fourPortsMin); port <= fourPortsMax; port++ {
				sport := 41000 + port - fourPortsMin
				if port == closed {
					d.putClosedMapping(t, sport, port, tc.closed)
					continue
				}
				d.putMapping(t, protoTCP, podB.IP, sport, serverIP, serverPort, port, live)
				want[natKey(protoTCP, podB.IP, sport, serverIP, serverPort)] = forwardEntry(port)
				want[natKey(protoTCP, serverIP, serverPort, masqIP, port)] = reverseEntry(podB.IP, sport)
			}
			syn := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
			in := leaving(syn.ip())

			r := d.egress(t, in)

			if !tc.reused {
				expectVerdict(t, r, tcActShot)
				d.expectCounts(t, one("to_netdev/drop_nat_no_port", in))
				if s := d.stats(t); s["no_port"] != 1 || s["reused_reset"] != 0 || s["reused_expired"] != 0 {
					t.Errorf("statistics %v, want no_port 1 and nothing reused", s)
				}
				return
			}
			expectVerdict(t, r, tcActOK)
			expectBytes(t, "packet", r.out, leaving(syn.from(masqIP, closed).ip()))
			expectChecksums(t, r.out)
			fk := natKey(protoTCP, podA.IP, podPort, serverIP, serverPort)
			rk := natKey(protoTCP, serverIP, serverPort, masqIP, closed)
			want[fk], want[rk] = forwardEntry(closed), reverseEntry(podA.IP, podPort)
			d.expectMappings(t, want) // pod B:41001's forward half is gone
			d.expectExpiry(t, rk, r, lifetimeTCPSyn, 0)
			got := d.stats(t)
			d.expectStats(t, map[string]uint64{"allocated": 1, "reused_reset": 1, "retries": got["retries"]})
		})
	}
}

// A pod that opens a new connection on a reset flow's tuple (it reuses its
// source port) keeps the flow's mapping, and the SYN clears the reset mark
// on the reply half: until the server answers, the port must not look free
// to the allocator, or the answer would reach another pod. Afterwards a new
// flow finds every port live and is refused instead of taking this one.
func TestSNATReopenedTupleKeepsItsPort(t *testing.T) {
	d := newSNATDatapath(t, fourPorts)
	live := monotonic(t) + uint64(lifetimeTCPEstablished)
	const reopened = fourPortsMin + 2
	for port := uint16(fourPortsMin); port <= fourPortsMax; port++ {
		sport := 41000 + port - fourPortsMin
		if port == reopened {
			d.putClosedMapping(t, sport, port, tcpRST)
			continue
		}
		d.putMapping(t, protoTCP, podB.IP, sport, serverIP, serverPort, port, live)
	}
	sport := uint16(41000 + reopened - fourPortsMin)
	syn := tcpFlow(podB.IP, sport, serverIP, serverPort, tcpSYN)

	r := d.egress(t, leaving(syn.ip()))

	expectVerdict(t, r, tcActOK)
	expectBytes(t, "packet", r.out, leaving(syn.from(masqIP, reopened).ip()))
	rk := natKey(protoTCP, serverIP, serverPort, masqIP, reopened)
	rev := d.mappings(t)[rk]
	if rev.TcpFlags != 0 {
		t.Errorf("reply half's TCP flags %#x after the SYN, want none", rev.TcpFlags)
	}
	d.expectExpiry(t, rk, r, lifetimeTCPSyn, 0)

	other := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
	in := leaving(other.ip())
	r = d.egress(t, in)
	expectVerdict(t, r, tcActShot)
	if got := d.mappings(t)[rk]; got.ToAddr != maps.Addr16(podB.IP) || got.ToPort != maps.Port(sport) {
		t.Errorf("reply half of the reopened flow now leads to %v port %d, want pod B:%d", got.ToAddr, got.ToPort, sport)
	}
	if s := d.stats(t); s["reused_reset"] != 0 || s["no_port"] != 1 {
		t.Errorf("statistics %v, want no_port 1 and nothing reused", s)
	}
}

// Taking over an expired mapping deletes the old flow's forward half only
// while it still leads to that port. Here the pod reused its tuple after
// the old mapping expired and got a mapping of its own on another port;
// when the old port is taken over by a third flow, the pod's live forward
// half must stay, or its next packet would be balanced onto a new port
// mid-connection.
func TestSNATTakeoverKeepsNewerForwardHalf(t *testing.T) {
	d := newSNATDatapath(t, fourPorts)
	now := monotonic(t)
	live, dead := now+uint64(lifetimeTCPEstablished), now-1_000_000_000
	const stale, current = fourPortsMin, fourPortsMin + 1
	const sport = 41000
	// The stale reply half still names pod B:41000; the forward half under
	// that tuple is the newer flow's, on port current.
	d.putMapping(t, protoTCP, podB.IP, sport, serverIP, serverPort, stale, dead)
	d.putMapping(t, protoTCP, podB.IP, sport, serverIP, serverPort, current, live)
	for port := uint16(current + 1); port <= fourPortsMax; port++ {
		d.putMapping(t, protoTCP, podB.IP, 42000+port, serverIP, serverPort, port, live)
	}
	fk := natKey(protoTCP, podB.IP, sport, serverIP, serverPort)

	r := d.egress(t, leaving(tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN).ip()))

	expectVerdict(t, r, tcActOK)
	if p := srcPortOf(r.out); p != stale {
		t.Fatalf("new flow got port %d, want the expired mapping's %d", p, stale)
	}
	got, ok := d.mappings(t)[fk]
	if !ok || got.ToPort != maps.Port(current) {
		t.Errorf("pod B:%d's forward half is %+v (present %v), want it kept on port %d", sport, got, ok, current)
	}
	data := tcpFlow(podB.IP, sport, serverIP, serverPort, tcpACK)
	r = d.egress(t, leaving(data.ip()))
	expectVerdict(t, r, tcActOK)
	expectBytes(t, "packet", r.out, leaving(data.from(masqIP, current).ip()))
}
