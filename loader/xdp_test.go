package loader_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
)

// xdpOn is the XDP attachment podpath lists for a device and the mode the
// kernel reports there: "" for none.
func (n *testNode) xdpOn(t *testing.T, ifname string) (listed, kernel string) {
	t.Helper()
	for _, a := range n.attachments(t) {
		if a.Program == maps.ProgXDPNetdev && a.Ifname == ifname {
			listed = a.Mode
		}
	}
	n.do(t, func() error {
		dev, err := netlink.LinkByName(ifname)
		if err != nil || dev.Attrs().Xdp == nil {
			return err
		}
		kernel = map[uint32]string{nl.XDP_ATTACHED_DRV: loader.ModeXDPNative, nl.XDP_ATTACHED_SKB: loader.ModeXDPGeneric}[dev.Attrs().Xdp.AttachMode]
		return nil
	})
	return listed, kernel
}

func (n *testNode) recordedXDPMode(t *testing.T) string {
	t.Helper()
	c, err := loader.ReadNodeConfig(n.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	return c.XDPMode
}

// addBridge adds a bridge, up: a device without native XDP (the bridge
// driver has no ndo_bpf), and one every kernel builds, unlike dummy.
func (n *testNode) addBridge(t *testing.T, name string) {
	t.Helper()
	n.do(t, func() error {
		la := netlink.NewLinkAttrs()
		la.Name = name
		br := &netlink.Bridge{LinkAttrs: la}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	})
}

// The uplinks' XDP mode is what init is told, auto by default: on a veth
// (native XDP) auto attaches nothing, each other mode is attached as
// asked, the kernel agrees, init records it, a re-init that names none
// keeps it, a change of mode leaves one program on the device, and off
// leaves none.
func TestXDPModesOnVeth(t *testing.T) {
	n := newTestNode(t)
	n.cfg.Uplinks, n.cfg.NoSNAT = []string{"lt0"}, true
	for _, step := range []struct{ mode, want, recorded string }{
		{"", "", loader.XDPAuto},
		{loader.XDPNative, loader.ModeXDPNative, loader.XDPNative},
		{loader.XDPAuto, "", loader.XDPAuto},
		{loader.XDPGeneric, loader.ModeXDPGeneric, loader.XDPGeneric},
		{"", loader.ModeXDPGeneric, loader.XDPGeneric},
		{loader.XDPNative, loader.ModeXDPNative, loader.XDPNative},
		{loader.XDPOff, "", loader.XDPOff},
		{"", "", loader.XDPOff},
		{loader.XDPNative, loader.ModeXDPNative, loader.XDPNative},
	} {
		n.cfg.XDPMode = step.mode
		n.do(t, func() error { return loader.Init(n.cfg) })
		listed, kernel := n.xdpOn(t, "lt0")
		if listed != step.want || kernel != step.want {
			t.Fatalf("init with XDP mode %q: listed %q, kernel reports %q, want %q", step.mode, listed, kernel, step.want)
		}
		if got := n.recordedXDPMode(t); got != step.recorded {
			t.Fatalf("init with XDP mode %q recorded %q, want %q", step.mode, got, step.recorded)
		}
	}
	// Re-init in the same mode replaces the program in place.
	before := n.attachmentsByProgram(t)[maps.ProgXDPNetdev]
	n.do(t, func() error { return loader.Init(n.cfg) })
	after := n.attachmentsByProgram(t)[maps.ProgXDPNetdev]
	if after.ProgramID == before.ProgramID || after.ProgramID != programID(t, n.cfg.PinRoot, maps.ProgXDPNetdev) {
		t.Fatalf("re-init: XDP runs program %d, was %d, pinned %d", after.ProgramID, before.ProgramID, programID(t, n.cfg.PinRoot, maps.ProgXDPNetdev))
	}
}

// A device without native XDP (a bridge) is
// refused in native mode with an error that names it and the way out, and
// nothing is left on its XDP hook; generic attaches there; auto takes it
// without XDP (and removes the generic program).
func TestXDPNativeRefusedWithoutDriverSupport(t *testing.T) {
	n := newTestNode(t)
	n.addBridge(t, "xd0")
	n.cfg.Uplinks, n.cfg.NoSNAT = []string{"xd0"}, true
	for _, mode := range []string{loader.XDPNative} {
		n.cfg.XDPMode = mode
		var err error
		n.do(t, func() error { err = loader.Init(n.cfg); return nil })
		if err == nil || !strings.Contains(err.Error(), "xd0") || !strings.Contains(err.Error(), "no native XDP") ||
			!strings.Contains(err.Error(), "--xdp-mode generic") {
			t.Fatalf("init with XDP mode %q on a bridge: %v, want a refusal naming xd0 and --xdp-mode generic", mode, err)
		}
		t.Logf("init with XDP mode %q: %v", mode, err)
		if listed, kernel := n.xdpOn(t, "xd0"); listed != "" || kernel != "" {
			t.Fatalf("refused native XDP left %q (kernel: %q) on xd0", listed, kernel)
		}
	}
	n.cfg.XDPMode = loader.XDPGeneric
	n.do(t, func() error { return loader.Init(n.cfg) })
	if listed, kernel := n.xdpOn(t, "xd0"); listed != loader.ModeXDPGeneric || kernel != loader.ModeXDPGeneric {
		t.Fatalf("generic on xd0: listed %q, kernel %q", listed, kernel)
	}
	n.cfg.XDPMode = loader.XDPAuto
	n.do(t, func() error { return loader.Init(n.cfg) })
	if listed, kernel := n.xdpOn(t, "xd0"); listed != "" || kernel != "" {
		t.Fatalf("auto on xd0: listed %q, kernel %q", listed, kernel)
	}
	n.cfg.XDPMode = loader.XDPGeneric
	n.do(t, func() error { return loader.Init(n.cfg) })
	n.cfg.XDPMode = loader.XDPOff
	n.do(t, func() error { return loader.Init(n.cfg) })
	if listed, kernel := n.xdpOn(t, "xd0"); listed != "" || kernel != "" {
		t.Fatalf("off on xd0: listed %q, kernel %q", listed, kernel)
	}
}

// A node initialised before XDP modes were recorded has none in node.json.
// Re-initialised without a mode (an upgrade with the same flags) it keeps
// what its uplinks run, generic on a device without native XDP rather than
// failing, and records it; an explicit mode still wins.
func TestXDPModeOfNodeInitialisedBefore(t *testing.T) {
	n := newTestNode(t)
	n.addBridge(t, "xd0")
	n.cfg.NoSNAT = true
	forget := func() {
		t.Helper()
		path := filepath.Join(n.cfg.StateDir, "node.json")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var rec map[string]any
		if err := json.Unmarshal(b, &rec); err != nil {
			t.Fatal(err)
		}
		delete(rec, "xdpMode")
		if b, err = json.Marshal(rec); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		uplinks      []string
		before, kept string
	}{
		{[]string{"lt0", "xd0"}, loader.XDPGeneric, loader.XDPGeneric},
		{[]string{"lt0", "xd0"}, loader.XDPOff, loader.XDPOff},
		{[]string{"lt0"}, loader.XDPNative, loader.XDPNative},
	} {
		n.cfg.Uplinks, n.cfg.XDPMode = step.uplinks, step.before
		n.do(t, func() error { return loader.Init(n.cfg) })
		forget()
		n.cfg.XDPMode = ""
		n.do(t, func() error { return loader.Init(n.cfg) })
		if got := n.recordedXDPMode(t); got != step.kept {
			t.Fatalf("node that ran %s on %v, re-initialised without a mode: recorded %q, want %q", step.before, step.uplinks, got, step.kept)
		}
	}
}

func TestInitRefusesUnknownXDPMode(t *testing.T) {
	n := newTestNode(t)
	n.cfg.XDPMode = "driver"
	var err error
	n.do(t, func() error { err = loader.Init(n.cfg); return nil })
	if err == nil || !strings.Contains(err.Error(), `XDP mode "driver": want auto, native, generic or off`) {
		t.Fatalf("init with XDP mode driver: %v", err)
	}
}
