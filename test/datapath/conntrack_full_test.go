package datapath_test

import (
	stdmaps "maps"
	"testing"

	"github.com/podpath/podpath/maps"
)

// Conntrack is an LRU map: when it is full, a new flow is never refused; the
// least recently used entries make room. A flow with traffic keeps its
// entries (each lookup marks them used) and so its backend, in both
// directions, while thousands of new flows pass through a table a fraction
// of their size.
func TestConntrackFullEvictsIdleFlows(t *testing.T) {
	const size, flows = 1024, 3000
	sizes := stdmaps.Clone(testMapSizes)
	sizes[maps.MapConntrack] = size
	d := newSizedServiceDatapath(t, sizes, clusterIP(protoTCP, backendB, backendC))

	active := tcpFlow(podA.IP, 30000, vip, vipPort, tcpSYN)
	first := d.send(t, podA, active.sentBy(podA))
	expectVerdict(t, first, tcActRedirect)
	be, ok := backendAt(allBackends, dstOf(first.out))
	if !ok {
		t.Fatalf("the active flow went to %s", dstOf(first.out))
	}
	p, _ := podAt(be.Addr)
	data := active
	data.TCPFlags = tcpACK | tcpPSH
	answer := active.to(be.Addr, be.Port).answer(tcpACK)

	// On one CPU: the kernel's LRU keeps free and inactive entries per CPU,
	// and a test hopping between CPUs under load can leave the oldest entry
	// on a list no later insert evicts from.
	defer pinToOneCPU(t)()
	for i := range flows {
		syn := tcpFlow(podA.IP, uint16(31000+i), vip, vipPort, tcpSYN)
		if r := d.send(t, podA, syn.sentBy(podA)); r.verdict != tcActRedirect {
			t.Fatalf("new flow %d of %d refused (verdict %d): %v", i, flows, r.verdict, d.counts(t))
		}
		if i%50 == 0 {
			r := d.send(t, podA, data.sentBy(podA))
			if got := dstOf(r.out); r.verdict != tcActRedirect || got.Addr() != be.Addr {
				t.Fatalf("after %d new flows the active flow's data went to %s (verdict %d), want %s", i, got, r.verdict, be.Addr)
			}
			expectForwarded(t, d.send(t, p, answer.sentBy(p)), answer.from(vip, vipPort).routedInto(podA))
		}
	}
	ct := d.ctAll(t)
	if len(ct) > size {
		t.Errorf("%d conntrack entries in a map of %d", len(ct), size)
	}
	if _, ok := ct[ctKey(protoTCP, podA.IP, 31000, vip, vipPort)]; ok {
		t.Errorf("the first idle flow's entry is still there: the table was never full")
	}
	if c := d.counts(t); c["from_pod/drop_ct_full"].Packets != 0 {
		t.Errorf("drops for a full conntrack: %v", c)
	}
	t.Logf("%d new flows (2 entries each) through a conntrack of %d: none refused, %d entries left, the active flow kept backend %d",
		flows, size, len(ct), be.ID)
}

// Under pressure the LRU may evict one half of a flow that is still in use.
// The other half restores it within a second of traffic (when it pushes its
// own expiry out), so the flow keeps its backend instead of being balanced
// anew on one side and left untranslated on the other.
func TestConntrackRestoresEvictedHalf(t *testing.T) {
	syn := tcpFlow(podA.IP, 30100, vip, vipPort, tcpSYN)
	fwd, rev := ctKeyOf(syn), ctKey(protoTCP, podB.IP, backendPort, podA.IP, syn.Sport)
	data := syn
	data.TCPFlags = tcpACK | tcpPSH
	answer := syn.to(podB.IP, backendPort).answer(tcpACK | tcpPSH)

	// due makes an entry's next touch push its expiry out now.
	due := func(t *testing.T, d *svcDatapath, k maps.CtKey) {
		e, ok := d.ctEntry(t, k)
		if !ok {
			t.Fatalf("no entry under %s", fmtCtKey(k))
		}
		e.Expires = monotonic(t) + uint64(5e9)
		d.putCtEntry(t, k, e)
	}
	setup := func(t *testing.T) *svcDatapath {
		svc := clusterIP(protoTCP, backendB)
		d := newServiceDatapath(t, svc)
		expectForwarded(t, d.send(t, podA, syn.sentBy(podA)), syn.to(podB.IP, backendPort).routedInto(podB))
		synack := syn.to(podB.IP, backendPort).answer(tcpSYN | tcpACK)
		expectForwarded(t, d.send(t, podB, synack.sentBy(podB)), synack.from(vip, vipPort).routedInto(podA))
		// From now on a new choice would be C.
		svc.Slots = []uint32{backendC}
		d.putService(t, svc)
		return d
	}

	t.Run("reply entry evicted, the client sends", func(t *testing.T) {
		d := setup(t)
		if err := d.conntrack.Delete(&rev); err != nil {
			t.Fatal(err)
		}
		due(t, d, fwd)
		expectForwarded(t, d.send(t, podA, data.sentBy(podA)), data.to(podB.IP, backendPort).routedInto(podB))
		e, ok := d.ctEntry(t, rev)
		if !ok || e.Flags != maps.CtFlagReply || e.BackendId != backendB || e.NatAddr != maps.Addr16(vip) || e.NatPort != maps.Port(vipPort) {
			t.Fatalf("reply entry not restored: %+v (present %v)", e, ok)
		}
		expectForwarded(t, d.send(t, podB, answer.sentBy(podB)), answer.from(vip, vipPort).routedInto(podA))
	})
	t.Run("forward entry evicted, the backend sends", func(t *testing.T) {
		d := setup(t)
		if err := d.conntrack.Delete(&fwd); err != nil {
			t.Fatal(err)
		}
		due(t, d, rev)
		expectForwarded(t, d.send(t, podB, answer.sentBy(podB)), answer.from(vip, vipPort).routedInto(podA))
		e, ok := d.ctEntry(t, fwd)
		if !ok || e.Flags != 0 || e.BackendId != backendB || e.SvcId != tcpSvcID {
			t.Fatalf("forward entry not restored: %+v (present %v)", e, ok)
		}
		// Still B, not the new choice C.
		expectForwarded(t, d.send(t, podA, data.sentBy(podA)), data.to(podB.IP, backendPort).routedInto(podB))
	})
}
