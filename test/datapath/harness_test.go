// Package datapath_test runs the real entry programs (bpf/from_pod.c,
// bpf/to_pod.c, bpf/xdp_netdev.c, ...) with BPF_PROG_RUN on hand-built
// packets and checks the verdict, every byte of the packet that comes out
// and the counters. Needs root (CAP_BPF, CAP_NET_ADMIN).
package datapath_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/maps"
)

// Return codes (internal/progrun).
const (
	tcActOK       = progrun.TCActOK
	tcActShot     = progrun.TCActShot
	tcActRedirect = progrun.TCActRedirect

	xdpDrop = progrun.XDPDrop
	xdpPass = progrun.XDPPass
)

// pod is an endpoint as the CNI plugin registers it.
type pod struct {
	IP      netip.Addr
	Ifindex uint32           // host-side veth
	MAC     net.HardwareAddr // the pod's eth0
	NodeMAC net.HardwareAddr // the host-side veth: the pod's gateway MAC
	Cookie  uint64           // netns cookie
}

// Two pods on this node. Their gateway MACs differ, so the source MAC of a
// forwarded packet shows which endpoint entry the program used.
var (
	podA = pod{
		IP:      netip.MustParseAddr("10.244.1.10"),
		Ifindex: 10,
		MAC:     mustMAC("02:00:0a:f4:01:0a"),
		NodeMAC: mustMAC("ee:ee:00:00:00:0a"),
		Cookie:  0x1000,
	}
	podB = pod{
		IP:      netip.MustParseAddr("10.244.1.20"),
		Ifindex: 20,
		MAC:     mustMAC("02:00:0a:f4:01:14"),
		NodeMAC: mustMAC("ee:ee:00:00:00:14"),
		Cookie:  0x2000,
	}

	// Addresses that are not pods on this node.
	gatewayIP   = netip.MustParseAddr("169.254.1.1")
	remotePodIP = netip.MustParseAddr("10.244.2.7") // a pod on another node
	internetIP  = netip.MustParseAddr("1.1.1.1")
	unknownIP   = netip.MustParseAddr("10.244.1.99") // in the pod CIDR, not registered

	broadcastMAC = mustMAC("ff:ff:ff:ff:ff:ff")
	strangerMAC  = mustMAC("02:de:ad:be:ef:01")
)

func (p pod) info() maps.EndpointInfo {
	return maps.NewEndpointInfo(p.Ifindex, p.MAC, p.NodeMAC, p.Cookie)
}

// datapath is one node's programs sharing fresh, unpinned maps.
type datapath struct {
	fromPod   *ebpf.Program
	toPod     *ebpf.Program
	xdpNetdev *ebpf.Program
	endpoints *maps.Endpoints
	counters  *ebpf.Map
}

// newDatapath loads from_pod, to_pod and xdp_netdev sharing fresh,
// unpinned maps, so tests never see or disturb a node's pinned state, and
// registers the pods.
func newDatapath(t *testing.T, pods ...pod) *datapath {
	t.Helper()
	n := loadNode(t, []string{maps.ProgFromPod, maps.ProgToPod, maps.ProgXDPNetdev}, nil, 0)
	d := &datapath{
		fromPod:   n.Programs[maps.ProgFromPod],
		toPod:     n.Programs[maps.ProgToPod],
		xdpNetdev: n.Programs[maps.ProgXDPNetdev],
		endpoints: maps.NewEndpoints(n.Maps[maps.MapEndpoints]),
		counters:  n.Maps[maps.MapCounters],
	}
	for _, p := range pods {
		if err := d.endpoints.Put(p.IP, p.info()); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// loadNode loads programs sharing fresh, unpinned maps (internal/progrun),
// closed when the test ends.
func loadNode(t *testing.T, programs []string, sizes map[string]uint32, maglevSize uint32) *progrun.Node {
	t.Helper()
	return loadNodeVars(t, programs, sizes, maglevSize, nil)
}

// loadNodeVars is loadNode with the programs' read-only variables set as
// the loader sets them (progrun.LoadNodeVars).
func loadNodeVars(t *testing.T, programs []string, sizes map[string]uint32, maglevSize uint32, vars map[string]any) *progrun.Node {
	t.Helper()
	checkSkbContextLayout(t)
	n, err := progrun.LoadNodeVars(programs, sizes, maglevSize, vars)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// skbContext is the __sk_buff head a test may set (internal/progrun).
type skbContext = progrun.SkbContext

// requireIngressIfindex skips a test that must present packets as arriving
// on a device, on a kernel whose BPF_PROG_RUN cannot; the netns end-to-end
// tests still run the same programs there, on real devices.
func requireIngressIfindex(t *testing.T) {
	t.Helper()
	progrun.RequireIngressIfindex(t, "the end-to-end tests in network namespaces cover this path on this kernel")
}

// checkSkbContextLayout guards skbContext against the running kernel's
// definition, so a context field can never silently land in the wrong place.
func checkSkbContextLayout(t *testing.T) {
	t.Helper()
	if err := progrun.CheckLayout(); err != nil {
		t.Fatal(err)
	}
}

// runFromPod runs from_pod as tc ingress of the veth ingressIfindex and
// returns its verdict and the packet as it leaves the program.
func (d *datapath) runFromPod(t *testing.T, ingressIfindex uint32, frame []byte) (uint32, []byte) {
	t.Helper()
	r := runTC(t, d.fromPod, maps.ProgFromPod, skbContext{IngressIfindex: ingressIfindex}, frame)
	return r.verdict, r.out
}

// runToPod runs to_pod as tc egress of a pod's veth, on a packet the node's
// stack routed there. to_pod reads no device from the context, so this
// runs where BPF_PROG_RUN refuses ingress_ifindex too.
func (d *datapath) runToPod(t *testing.T, frame []byte) run {
	t.Helper()
	return runTC(t, d.toPod, maps.ProgToPod, skbContext{}, frame)
}

// runXDP runs xdp_netdev on frame and returns its verdict and the frame as
// it leaves the program; a frame shorter than 14 bytes is shown to it as
// progrun.RunXDP says.
func (d *datapath) runXDP(t *testing.T, frame []byte) (uint32, []byte) {
	t.Helper()
	ret, out, err := progrun.RunXDP(d.xdpNetdev, frame)
	if errors.Is(err, progrun.ErrNoXDPContext) {
		t.Skipf("%v; veth in the end-to-end tests never delivers one", err)
	} else if err != nil {
		t.Fatalf("run xdp_netdev: %v", err)
	}
	return ret, out
}

// count is one counter slot summed over CPUs.
type count struct{ Packets, Bytes uint64 }

// counts are the counters by "hook/reason", both named as user space names
// them (from BTF): "from_pod/drop_spoofed_ip".
type counts map[string]count

func (c counts) String() string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n\t%s: %d packets, %d bytes", k, c[k].Packets, c[k].Bytes)
	}
	if b.Len() == 0 {
		return "\n\t(none)"
	}
	return b.String()
}

// one is the counters after exactly one packet of frame was counted.
func one(hookReason string, frame []byte) counts {
	return counts{hookReason: {1, uint64(len(frame))}}
}

func (d *datapath) readCounters() (counts, error) {
	cs, err := maps.ReadCounters(d.counters)
	if err != nil {
		return nil, err
	}
	out := counts{}
	for _, c := range cs {
		out[c.Hook.String()+"/"+c.Reason.String()] = count{c.Packets, c.Bytes}
	}
	return out, nil
}

func (d *datapath) counts(t *testing.T) counts {
	t.Helper()
	c, err := d.readCounters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (d *datapath) expectCounts(t *testing.T, want counts) {
	t.Helper()
	if got := d.counts(t); !mapsEqual(got, want) {
		t.Errorf("counters:%s\nwant:%s", got, want)
	}
}

func mapsEqual(a, b counts) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// expectBytes compares a whole packet and names the first differing offset.
func expectBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Errorf("%s: %d bytes, want %d\ngot  % x\nwant % x", what, len(got), len(want), got, want)
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("%s: first difference at byte %d: %#02x, want %#02x\ngot  % x\nwant % x", what, i, got[i], want[i], got, want)
			return
		}
	}
}

// unchangedCase is a packet from_pod must leave byte for byte as it came,
// with a verdict and exactly one counted reason.
type unchangedCase struct {
	name    string
	ifindex uint32 // the veth the packet arrives on
	frame   []byte
	verdict uint32
	reason  string // counted under hook from_pod
}

func runUnchanged(t *testing.T, cases []unchangedCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := newDatapath(t, podA, podB)
			ret, out := d.runFromPod(t, tc.ifindex, tc.frame)
			if ret != tc.verdict {
				t.Errorf("verdict %d, want %d", ret, tc.verdict)
			}
			expectBytes(t, "packet", out, tc.frame)
			d.expectCounts(t, one("from_pod/"+tc.reason, tc.frame))
		})
	}
}
