package datapath_test

import (
	"testing"

	"github.com/podpath/podpath/maps"
)

// Pods of two networks exchange nothing unless one network reaches the
// other or all: from_pod drops the packet, counted under its own reason,
// wherever it was addressed (a pod, or a service whose backend it became).
// The check is symmetric, and pods of one network, or of none, pass.
func TestNetworkIsolation(t *testing.T) {
	type step struct {
		from, to pod
		pass     bool
	}
	tests := []struct {
		name string
		// The networks of pods A, B and C ("" none), and what each
		// network declares it reaches.
		nets    [3]string
		reaches map[string][]string
		steps   []step
	}{
		{
			name: "one network", nets: [3]string{"blue", "blue", "blue"},
			steps: []step{{podA, podB, true}, {podB, podA, true}, {podC, podA, true}},
		},
		{
			name: "two networks", nets: [3]string{"blue", "red", "blue"},
			reaches: map[string][]string{"blue": nil, "red": nil},
			steps:   []step{{podA, podB, false}, {podB, podA, false}, {podA, podC, true}, {podB, podB, true}},
		},
		{
			name: "a reach is both ways", nets: [3]string{"blue", "red", "green"},
			reaches: map[string][]string{"blue": nil, "red": {"blue"}, "green": nil},
			steps:   []step{{podA, podB, true}, {podB, podA, true}, {podA, podC, false}, {podB, podC, false}},
		},
		{
			name: "reaching every network", nets: [3]string{"blue", "red", "green"},
			reaches: map[string][]string{"blue": nil, "red": {maps.ReachAll}, "green": nil},
			steps:   []step{{podA, podB, true}, {podC, podB, true}, {podA, podC, false}},
		},
		{
			name: "a pod of no network", nets: [3]string{"blue", "", "red"},
			reaches: map[string][]string{"blue": nil, "red": nil},
			steps:   []step{{podA, podB, true}, {podB, podC, true}, {podC, podA, false}},
		},
		{
			// A network the node has no entry for reaches nothing but
			// itself: its pods are not let out by a missing entry.
			name: "a network with no entry", nets: [3]string{"blue", "gone", "gone"},
			reaches: map[string][]string{"blue": {maps.ReachAll}},
			steps:   []step{{podB, podC, true}, {podB, podA, true}},
		},
		{
			name: "no entry, no reach", nets: [3]string{"blue", "gone", "gone"},
			reaches: map[string][]string{"blue": nil},
			steps:   []step{{podB, podC, true}, {podB, podA, false}, {podA, podB, false}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newServiceDatapath(t)
			setNetworks(t, d, tc.nets, tc.reaches)
			for i, s := range tc.steps {
				f := udpFlow(s.from.IP, uint16(40000+i), s.to.IP, 53)
				in := f.sentBy(s.from)
				before := d.counts(t)
				r := d.send(t, s.from, in)
				if s.pass {
					expectForwarded(t, r, f.routedInto(s.to))
					expectCountsRose(t, before, d.counts(t), "from_pod/forward_local", in)
					continue
				}
				if r.verdict != tcActShot {
					t.Fatalf("%s to %s: verdict %d, want TC_ACT_SHOT (%d)", s.from.IP, s.to.IP, r.verdict, tcActShot)
				}
				expectCountsRose(t, before, d.counts(t), "from_pod/drop_network_isolated", in)
			}
		})
	}
}

// Isolation applies to the backend a service picked, not to the address
// the client used: a ClusterIP whose backend is a pod of another network
// gets the client nothing, one of its own network is reached.
func TestNetworkIsolationAfterServiceTranslation(t *testing.T) {
	d := newServiceDatapath(t, clusterIP(protoTCP, backendB), clusterIP(protoUDP, backendC))
	setNetworks(t, d, [3]string{"blue", "red", "blue"}, map[string][]string{"blue": nil, "red": nil})

	syn := tcpFlow(podA.IP, 41000, vip, vipPort, tcpSYN)
	in := syn.sentBy(podA)
	before := d.counts(t)
	r := d.send(t, podA, in)
	if r.verdict != tcActShot {
		t.Fatalf("SYN to a ClusterIP backed by another network's pod: verdict %d, want TC_ACT_SHOT", r.verdict)
	}
	expectCountsRose(t, before, d.counts(t), "from_pod/drop_network_isolated", in)

	dgram := udpFlow(podA.IP, 41001, vip, vipPort)
	r = d.send(t, podA, dgram.sentBy(podA))
	expectForwarded(t, r, dgram.to(podC.IP, backendPort).routedInto(podC))
}

// setNetworks puts pods A, B and C in the networks nets names and
// registers the networks of reaches with what they reach, as the CNI
// plugin does at ADD.
func setNetworks(t *testing.T, d *svcDatapath, nets [3]string, reaches map[string][]string) {
	t.Helper()
	nws := maps.NewNetworks(d.node.Maps[maps.MapNetworks], d.node.Maps[maps.MapNetworkReach])
	for name, r := range reaches {
		if _, err := nws.Put(name, r); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range []pod{podA, podB, podC} {
		info := p.info()
		if nets[i] != "" {
			info.Network = maps.NetworkID(nets[i])
		}
		if err := d.endpoints.Put(p.IP, info); err != nil {
			t.Fatal(err)
		}
	}
}

// expectCountsRose checks that exactly one counter rose between two reads,
// by one packet of frame.
func expectCountsRose(t *testing.T, before, after counts, hookReason string, frame []byte) {
	t.Helper()
	diff := counts{}
	for k, v := range after {
		if b := before[k]; b != v {
			diff[k] = count{v.Packets - b.Packets, v.Bytes - b.Bytes}
		}
	}
	if want := one(hookReason, frame); !mapsEqual(diff, want) {
		t.Errorf("counters rose by:%s\nwant:%s", diff, want)
	}
}
