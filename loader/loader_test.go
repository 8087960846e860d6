package loader_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// testNode is a network namespace with one veth pair and a pin root of its own.
type testNode struct {
	ns    ns.NetNS
	cfg   loader.Config
	veth  netlink.Link
	index int
}

func newTestNode(t *testing.T) *testNode {
	t.Helper()
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	root := filepath.Join("/sys/fs/bpf", "podpath-loadertest-"+filepath.Base(netns.Path()))
	n := &testNode{ns: netns, cfg: loader.Config{
		PinRoot:  root,
		StateDir: t.TempDir(),
		PodCIDR:  netip.MustParsePrefix("10.99.0.0/24"),
	}}
	t.Cleanup(func() {
		n.do(t, func() error { return loader.Reset(n.cfg.PinRoot, n.cfg.StateDir) })
		os.RemoveAll(root)
		netns.Close()
		testutils.UnmountNS(netns)
	})
	n.do(t, func() error {
		la := netlink.NewLinkAttrs()
		la.Name = "lt0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "lt1"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("lt0")
		if err != nil {
			return err
		}
		n.veth, n.index = l, l.Attrs().Index
		return netlink.LinkSetUp(l)
	})
	return n
}

func (n *testNode) do(t *testing.T, fn func() error) {
	t.Helper()
	if err := n.ns.Do(func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

func (n *testNode) attachments(t *testing.T) []loader.Attachment {
	t.Helper()
	var atts []loader.Attachment
	n.do(t, func() (err error) {
		atts, err = loader.Attachments(n.cfg.PinRoot)
		return err
	})
	return atts
}

func (n *testNode) attachFromPod(t *testing.T) string {
	t.Helper()
	var mode string
	n.do(t, func() error {
		prog, err := loader.LoadPinnedProgram(n.cfg.PinRoot, maps.ProgFromPod)
		if err != nil {
			return err
		}
		defer prog.Close()
		mode, err = loader.AttachTC(n.cfg.PinRoot, n.cfg.TCAttach, maps.ProgFromPod, prog, n.index, loader.Ingress)
		return err
	})
	return mode
}

func programID(t *testing.T, root, name string) uint32 {
	t.Helper()
	p, err := loader.LoadPinnedProgram(root, name)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return uint32(id)
}

// Re-running init loads new programs and swaps them into every hook they are
// attached to, while the maps, and what they hold, stay.
func testReplaceInPlace(t *testing.T, mode string) {
	n := newTestNode(t)
	n.cfg.TCAttach = mode
	n.do(t, func() error { return loader.Init(n.cfg) })
	wantMode := mode

	if mode := n.attachFromPod(t); mode != wantMode {
		t.Fatalf("attached with %q, want %q", mode, wantMode)
	}
	// Attaching again (a retried CNI ADD) must not stack a second program.
	n.attachFromPod(t)
	atts := n.attachments(t)
	if len(atts) != 1 || atts[0].Ifname != "lt0" || atts[0].Mode != wantMode || atts[0].Direction != loader.Ingress {
		t.Fatalf("attachments = %+v, want one %s ingress on lt0", atts, wantMode)
	}
	before := programID(t, n.cfg.PinRoot, maps.ProgFromPod)
	if atts[0].ProgramID != before {
		t.Fatalf("attached program %d, pinned %d", atts[0].ProgramID, before)
	}

	eps, err := maps.OpenEndpoints(n.cfg.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer eps.Close()
	ip := netip.MustParseAddr("10.99.0.7")
	if err := eps.Put(ip, maps.EndpointInfo{Ifindex: uint32(n.index), Mac: [6]uint8{2, 0, 0, 0, 0, 7}}); err != nil {
		t.Fatal(err)
	}

	n.do(t, func() error { return loader.Init(n.cfg) })

	after := programID(t, n.cfg.PinRoot, maps.ProgFromPod)
	if after == before {
		t.Fatalf("init did not load a new program (id %d)", after)
	}
	// lt0 is an endpoint's veth now, so init attached to_pod there too
	// (TestInitAttachesToPod).
	byProg := n.attachmentsByProgram(t)
	if len(byProg) != 2 || byProg[maps.ProgFromPod].ProgramID != after || byProg[maps.ProgToPod].Ifname != "lt0" {
		t.Fatalf("after re-init attachments = %+v, want program %d and to_pod on lt0", byProg, after)
	}
	reopened, err := maps.OpenEndpoints(n.cfg.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer reopened.Close()
	if info, ok, err := reopened.Lookup(ip); err != nil || !ok || info.Mac[5] != 7 {
		t.Fatalf("endpoint lost across re-init: %+v %v %v", info, ok, err)
	}

	n.do(t, func() error { return loader.DetachTC(n.cfg.PinRoot, maps.ProgFromPod, "lt0", loader.Ingress) })
	n.do(t, func() error { return loader.DetachTC(n.cfg.PinRoot, maps.ProgToPod, "lt0", loader.Egress) })
	if atts := n.attachments(t); len(atts) != 0 {
		t.Fatalf("after detach: %+v", atts)
	}
	// Detaching what is not attached is fine: DEL is retried too.
	n.do(t, func() error { return loader.DetachTC(n.cfg.PinRoot, maps.ProgFromPod, "lt0", loader.Ingress) })
}

// attachmentsByProgram is the node's attachments by program name; a
// program attached twice fails the test.
func (n *testNode) attachmentsByProgram(t *testing.T) map[string]loader.Attachment {
	t.Helper()
	out := map[string]loader.Attachment{}
	for _, a := range n.attachments(t) {
		if _, dup := out[a.Program]; dup {
			t.Fatalf("%s attached twice: %+v", a.Program, n.attachments(t))
		}
		out[a.Program] = a
	}
	return out
}

// Node init is the upgrade path: a pod connected by a build without
// to_pod has only from_pod on its veth, and init attaches to_pod at the
// veth's tc egress, found through the endpoints map, with the node's
// mechanism. Entries whose device is gone or is no veth are skipped. The
// next init replaces to_pod in place rather than attaching it again, and
// reset detaches it.
func testInitAttachesToPod(t *testing.T, mode string) {
	n := newTestNode(t)
	n.cfg.TCAttach = mode
	n.do(t, func() error { return loader.Init(n.cfg) })
	n.attachFromPod(t)
	eps, err := maps.OpenEndpoints(n.cfg.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer eps.Close()
	for ip, ifindex := range map[string]uint32{
		"10.99.0.7": uint32(n.index), // the pod on lt0
		"10.99.0.8": 1,               // lo: no veth
		"10.99.0.9": 4000,            // no such device
	} {
		if err := eps.Put(netip.MustParseAddr(ip), maps.EndpointInfo{Ifindex: ifindex}); err != nil {
			t.Fatal(err)
		}
	}
	if byProg := n.attachmentsByProgram(t); len(byProg) != 1 {
		t.Fatalf("before the upgrade: %+v, want from_pod only", byProg)
	}

	n.do(t, func() error { return loader.Init(n.cfg) })

	byProg := n.attachmentsByProgram(t)
	toPod, ok := byProg[maps.ProgToPod]
	if len(byProg) != 2 || !ok || toPod.Ifindex != n.index || toPod.Direction != loader.Egress || toPod.Mode != mode {
		t.Fatalf("after init: %+v, want from_pod and to_pod (%s egress) on lt0 only", byProg, mode)
	}
	if id := programID(t, n.cfg.PinRoot, maps.ProgToPod); toPod.ProgramID != id {
		t.Fatalf("to_pod attached is program %d, pinned %d", toPod.ProgramID, id)
	}

	n.do(t, func() error { return loader.Init(n.cfg) })

	byProg = n.attachmentsByProgram(t)
	again := byProg[maps.ProgToPod]
	if len(byProg) != 2 || again.ProgramID == toPod.ProgramID || again.ProgramID != programID(t, n.cfg.PinRoot, maps.ProgToPod) {
		t.Fatalf("second init: %+v, want to_pod replaced in place (was program %d)", byProg, toPod.ProgramID)
	}

	n.do(t, func() error { return loader.Reset(n.cfg.PinRoot, n.cfg.StateDir) })
	if atts := n.attachments(t); len(atts) != 0 {
		t.Fatalf("after reset: %+v", atts)
	}
	n.do(t, func() error {
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			filters, err := netlink.FilterList(n.veth, parent)
			if err != nil {
				return err
			}
			if len(filters) != 0 {
				t.Errorf("filters left on lt0 after reset (parent %#x): %+v", parent, filters)
			}
		}
		return nil
	})
}

func TestInitAttachesToPodTCX(t *testing.T) {
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	if !f.TCX {
		t.Skipf("kernel %s has no tcx; the loader uses legacy tc here (TestInitAttachesToPodLegacyTC)", f.Kernel)
	}
	testInitAttachesToPod(t, loader.ModeTCX)
}

func TestInitAttachesToPodLegacyTC(t *testing.T) {
	testInitAttachesToPod(t, loader.ModeLegacyTC)
}

func TestReplaceInPlaceTCX(t *testing.T) {
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	if !f.TCX {
		// Kernels before 6.6: the legacy test below covers the path in use.
		t.Skipf("kernel %s has no tcx; the loader uses legacy tc here (TestReplaceInPlaceLegacyTC)", f.Kernel)
	}
	testReplaceInPlace(t, loader.ModeTCX)
}

func TestReplaceInPlaceLegacyTC(t *testing.T) {
	testReplaceInPlace(t, loader.ModeLegacyTC)
}

func TestAttachXDP(t *testing.T) {
	n := newTestNode(t)
	n.do(t, func() error { return loader.Init(n.cfg) })
	n.do(t, func() error {
		prog, err := loader.LoadPinnedProgram(n.cfg.PinRoot, maps.ProgXDPNetdev)
		if err != nil {
			return err
		}
		defer prog.Close()
		// veth has native XDP on every supported kernel.
		return loader.AttachXDP(n.cfg.PinRoot, loader.XDPNative, maps.ProgXDPNetdev, prog, n.index)
	})
	atts := n.attachments(t)
	if len(atts) != 1 || atts[0].Program != maps.ProgXDPNetdev || atts[0].Mode != loader.ModeXDPNative {
		t.Fatalf("attachments = %+v", atts)
	}
	before := atts[0].ProgramID
	n.do(t, func() error { return loader.Init(n.cfg) })
	if atts := n.attachments(t); len(atts) != 1 || atts[0].ProgramID == before {
		t.Fatalf("XDP program not replaced in place: %+v (was %d)", atts, before)
	}
	n.do(t, func() error { return loader.Reset(n.cfg.PinRoot, n.cfg.StateDir) })
	if _, err := os.Stat(n.cfg.PinRoot); !os.IsNotExist(err) {
		t.Fatalf("pins left after reset: %v", err)
	}
	var xdp *netlink.LinkXdp
	n.do(t, func() error {
		l, err := netlink.LinkByName("lt0")
		if err == nil {
			xdp = l.Attrs().Xdp
		}
		return err
	})
	if xdp != nil && xdp.Attached {
		t.Fatalf("XDP still attached after reset: %+v", xdp)
	}
}

func TestInitValidates(t *testing.T) {
	cases := map[string]loader.Config{
		"no CIDR":        {},
		"host bits":      {PodCIDR: netip.MustParsePrefix("10.1.2.3/24")},
		"too small":      {PodCIDR: netip.MustParsePrefix("10.1.2.0/31")},
		"MTU":            {PodCIDR: netip.MustParsePrefix("10.1.2.0/24"), MTU: 100},
		"endpoints size": {PodCIDR: netip.MustParsePrefix("10.1.2.0/24"), MaxEndpoints: 1},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			c.PinRoot = "/sys/fs/bpf/podpath-validate-test"
			c.StateDir = t.TempDir()
			if err := loader.Init(c); err == nil {
				loader.Reset(c.PinRoot, c.StateDir)
				t.Fatalf("Init(%+v) succeeded", c)
			}
			if _, err := os.Stat(c.PinRoot); !os.IsNotExist(err) {
				t.Fatalf("invalid config left pins behind")
			}
		})
	}
}

func TestInitResolvesTCAttach(t *testing.T) {
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	n := newTestNode(t)
	n.do(t, func() error { return loader.Init(n.cfg) })
	c, err := loader.ReadNodeConfig(n.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if c.TCAttach != f.TCMechanism() {
		t.Fatalf("auto resolved to %q on a kernel offering %q", c.TCAttach, f.TCMechanism())
	}
	// The choice sticks until reset: attachments must not mix mechanisms.
	other := loader.ModeLegacyTC
	if c.TCAttach == loader.ModeLegacyTC {
		other = loader.ModeTCX
	}
	n.cfg.TCAttach = other
	n.ns.Do(func(ns.NetNS) error { err = loader.Init(n.cfg); return nil })
	if err == nil {
		t.Fatalf("switching a node from %s to %s without reset succeeded", c.TCAttach, other)
	}
}

func TestInitRefusesCIDRChange(t *testing.T) {
	n := newTestNode(t)
	n.do(t, func() error { return loader.Init(n.cfg) })
	c := n.cfg
	c.PodCIDR = netip.MustParsePrefix("10.98.0.0/24")
	var err error
	n.ns.Do(func(ns.NetNS) error { err = loader.Init(c); return nil })
	if err == nil {
		t.Fatal("changing the pod CIDR of an initialised node succeeded")
	}
}
