package datapath_test

import (
	"net/netip"
	"testing"

	"github.com/podpath/podpath/maps"
)

// A range of four ports for these tests, so it runs out.
const (
	fourPortsMin = 21000
	fourPortsMax = 21003
)

var fourPorts = snatSetup{PortMin: fourPortsMin, PortMax: fourPortsMax}

// fillFourPorts masquerades four flows from pod A's ports 40001..40004 to
// server:443 over TCP and returns the ports they got, by pod port.
func fillFourPorts(t *testing.T, d *snatDatapath) map[uint16]uint16 {
	t.Helper()
	got := map[uint16]uint16{}
	seen := map[uint16]uint16{}
	for sport := uint16(podPort + 1); sport <= podPort+4; sport++ {
		f := tcpFlow(podA.IP, sport, serverIP, serverPort, tcpSYN)
		r := d.egress(t, leaving(f.ip()))
		expectVerdict(t, r, tcActOK)
		port := d.allocatedPort(t, r.out)
		expectBytes(t, "packet", r.out, leaving(f.from(masqIP, port).ip()))
		if other, ok := seen[port]; ok {
			t.Errorf("pod ports %d and %d both got port %d", other, sport, port)
		}
		seen[port], got[sport] = sport, port
	}
	return got
}

// fourMappings are the snat entries of the flows fillFourPorts sent.
func fourMappings(ports map[uint16]uint16) map[maps.CtKey]maps.NatEntry {
	want := map[maps.CtKey]maps.NatEntry{}
	for sport, port := range ports {
		want[natKey(protoTCP, podA.IP, sport, serverIP, serverPort)] = forwardEntry(port)
		want[natKey(protoTCP, serverIP, serverPort, masqIP, port)] = reverseEntry(podA.IP, sport)
	}
	return want
}

// Ports are allocated per destination (address, port and protocol): the
// reply's tuple must be unique, nothing else. Four ports serve four flows
// to the same destination, each its own port. A fifth new flow there finds
// every port taken after 32 tries and is dropped as drop_nat_no_port,
// unchanged, leaving no entry behind; the statistics count it, and the
// retries of all five flows: 32 for the fifth, at most 0+1+2+3 for the
// first four (a scan from a random start passes at most the ports already
// taken). Flows already mapped keep working, and a flow to any other
// destination still gets a port.
func TestSNATPortAllocation(t *testing.T) {
	fifth := tcpFlow(podA.IP, podPort+5, serverIP, serverPort, tcpSYN)
	tests := []struct {
		name string
		send flow
		// translated: a new mapping for send; else dropped for lack of
		// ports.
		translated bool
	}{
		{name: "a fifth flow to the same destination", send: fifth},
		{name: "the same pod port to another address", send: fifth.to(server2IP, serverPort), translated: true},
		{name: "the same pod port to another port", send: fifth.to(serverIP, 80), translated: true},
		{name: "UDP to the same address and port", send: udpFlow(podA.IP, podPort+5, serverIP, serverPort), translated: true},
		{name: "pod B to the same destination", send: tcpFlow(podB.IP, podPort+5, serverIP, serverPort, tcpSYN)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, fourPorts)
			ports := fillFourPorts(t, d)
			filled := d.stats(t)
			if filled["allocated"] != 4 || filled["retries"] > 0+1+2+3 || filled["no_port"]+filled["map_full"]+filled["reused_expired"] != 0 {
				t.Errorf("nat_stats after four flows %v, want 4 allocated, at most 6 retries, nothing else", filled)
			}
			in := leaving(tc.send.ip())

			r := d.egress(t, in)

			want := fourMappings(ports)
			if !tc.translated {
				expectVerdict(t, r, tcActShot)
				expectBytes(t, "packet", r.out, in)
				d.expectMappings(t, want)
				d.expectStats(t, map[string]uint64{"allocated": 4, "no_port": 1, "retries": filled["retries"] + 32})
				d.expectCounts(t, counts{
					"to_netdev/snat":             {4, 4 * uint64(len(in))},
					"to_netdev/drop_nat_no_port": {1, uint64(len(in))},
				})
			} else {
				expectVerdict(t, r, tcActOK)
				port := d.allocatedPort(t, r.out)
				expectBytes(t, "packet", r.out, leaving(tc.send.from(masqIP, port).ip()))
				expectChecksums(t, r.out)
				want[ctKeyOf(tc.send)] = forwardEntry(port)
				want[natKey(tc.send.Proto, tc.send.Dst, tc.send.Dport, masqIP, port)] = reverseEntry(tc.send.Src, tc.send.Sport)
				d.expectMappings(t, want)
				if got := d.stats(t); got["allocated"] != 5 || got["no_port"] != 0 || got["retries"] != filled["retries"] {
					t.Errorf("nat_stats %v, want 5 allocated, no retries beyond the first four flows' %d", got, filled["retries"])
				}
			}

			// The mapped flows are unaffected: their next packets leave
			// with their ports.
			for sport, port := range ports {
				f := tcpFlow(podA.IP, sport, serverIP, serverPort, tcpACK)
				r := d.egress(t, leaving(f.ip()))
				expectVerdict(t, r, tcActOK)
				expectBytes(t, "next packet", r.out, leaving(f.from(masqIP, port).ip()))
			}
		})
	}
}

// A mapping whose reverse half has expired gives its port to the next flow
// that needs one: with three of four ports held by live mappings and the
// fourth by an expired one, a new flow to the same destination gets the
// fourth port. The expired reverse entry is overwritten with the new pod,
// the old flow's forward entry is deleted (its next packet must not leave
// through a port that is someone else's now), the live mappings are left as
// they were, and reused_expired counts the takeover.
func TestSNATExpiredMappingTakenOver(t *testing.T) {
	d := newSNATDatapath(t, fourPorts)
	now := monotonic(t)
	live, dead := now+uint64(lifetimeTCPEstablished), now-1_000_000_000
	const freed = fourPortsMin + 2
	want := map[maps.CtKey]maps.NatEntry{}
	for port := uint16(fourPortsMin); port <= fourPortsMax; port++ {
		sport := 41000 + port - fourPortsMin
		expires := live
		if port == freed {
			expires = dead
		} else {
			want[natKey(protoTCP, podB.IP, sport, serverIP, serverPort)] = forwardEntry(port)
			want[natKey(protoTCP, serverIP, serverPort, masqIP, port)] = reverseEntry(podB.IP, sport)
		}
		d.putMapping(t, protoTCP, podB.IP, sport, serverIP, serverPort, port, expires)
	}
	before := d.mappings(t)
	syn := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
	in := leaving(syn.ip())

	r := d.egress(t, in)

	expectVerdict(t, r, tcActOK)
	expectTuple(t, r.out, addrPort(masqIP, freed), addrPort(serverIP, serverPort))
	expectBytes(t, "packet", r.out, leaving(syn.from(masqIP, freed).ip()))
	expectChecksums(t, r.out)
	fk := natKey(protoTCP, podA.IP, podPort, serverIP, serverPort)
	rk := natKey(protoTCP, serverIP, serverPort, masqIP, freed)
	want[fk], want[rk] = forwardEntry(freed), reverseEntry(podA.IP, podPort)
	d.expectMappings(t, want) // the old forward entry (pod B:41002) is gone
	d.expectExpiry(t, fk, r, lifetimeTCPSyn, 0)
	d.expectExpiry(t, rk, r, lifetimeTCPSyn, 0)
	after := d.mappings(t)
	for k, e := range before {
		if e.Expires == live && after[k] != e {
			t.Errorf("live entry %s changed: %+v, was %+v", fmtCtKey(k), after[k], e)
		}
	}
	got := d.stats(t)
	if got["retries"] > 3 {
		t.Errorf("%d retries, want at most 3 (the live ports)", got["retries"])
	}
	d.expectStats(t, map[string]uint64{"allocated": 1, "reused_expired": 1, "retries": got["retries"]})
	d.expectCounts(t, one("to_netdev/snat", in))
}

// The snat map is a plain hash: a mapping in use is never evicted, so when
// the map has no room for a new flow's two entries the flow is dropped as
// drop_nat_map_full, unchanged, and counted. With room for two entries the
// second flow's reverse insert fails; with room for three it fits and the
// forward one does not, and the reverse half is removed again. Either way
// the map holds exactly the first flow's mapping afterwards.
func TestSNATMapFull(t *testing.T) {
	for _, size := range []uint32{2, 3} {
		t.Run(map[uint32]string{2: "room for one mapping", 3: "room for one mapping and a half"}[size], func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{MaxMappings: size})
			first := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
			in1 := leaving(first.ip())
			r := d.egress(t, in1)
			expectVerdict(t, r, tcActOK)
			port := d.allocatedPort(t, r.out)
			want := map[maps.CtKey]maps.NatEntry{
				ctKeyOf(first): forwardEntry(port),
				natKey(protoTCP, serverIP, serverPort, masqIP, port): reverseEntry(podA.IP, podPort),
			}

			second := tcpFlow(podB.IP, podPort, netip.MustParseAddr("198.51.100.9"), serverPort, tcpSYN)
			in2 := leaving(second.ip())
			r = d.egress(t, in2)

			expectVerdict(t, r, tcActShot)
			expectBytes(t, "packet", r.out, in2)
			d.expectMappings(t, want)
			d.expectStats(t, map[string]uint64{"allocated": 1, "map_full": 1})
			d.expectCounts(t, counts{
				"to_netdev/snat":              {1, uint64(len(in1))},
				"to_netdev/drop_nat_map_full": {1, uint64(len(in2))},
			})

			// The first flow keeps working.
			r = d.egress(t, in1)
			expectVerdict(t, r, tcActOK)
			expectBytes(t, "first flow's next packet", r.out, leaving(first.from(masqIP, port).ip()))
		})
	}
}
