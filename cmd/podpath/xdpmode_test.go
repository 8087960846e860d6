package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	"sigs.k8s.io/yaml"
)

// cliNode runs the podpath binary, built afresh, in a network namespace of
// its own with a pin root and state directory of its own; the node is
// reset when the test ends.
func cliNode(t *testing.T, name string) (podpath func(args ...string) (string, error), netns ns.NetNS) {
	t.Helper()
	bin, err := sim.BuildPodpath(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	netns, err = sim.NewNetNS(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.RemoveNetNS(netns) })
	global := []string{"--pin-root", filepath.Join(loader.BPFFSMount, fmt.Sprintf("podpath-%s-%d", name, os.Getpid())), "--state-dir", t.TempDir()}
	podpath = func(args ...string) (out string, err error) {
		netns.Do(func(ns.NetNS) error {
			var b []byte
			b, err = exec.Command(bin, append(global, args...)...).CombinedOutput()
			out = string(b)
			return nil
		})
		return out, err
	}
	t.Cleanup(func() { podpath("node", "reset") })
	return podpath, netns
}

func subcommand(t *testing.T, path ...string) *cobra.Command {
	t.Helper()
	cmd, _, err := newRoot().Find(path)
	if err != nil {
		t.Fatal(err)
	}
	return cmd
}

// node init and the agent take the same --xdp-mode into the same
// loader.Config field, and --no-xdp, the flag it replaced, still means off.
func TestXDPModeFlag(t *testing.T) {
	for _, path := range [][]string{{"node", "init"}, {"agent"}} {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{nil, ""},
			{[]string{"--xdp-mode", "generic"}, loader.XDPGeneric},
			{[]string{"--xdp-mode=off"}, loader.XDPOff},
			{[]string{"--no-xdp"}, loader.XDPOff},
			{[]string{"--no-xdp=false"}, ""},
		} {
			cmd := subcommand(t, path...)
			if err := cmd.ParseFlags(tc.args); err != nil {
				t.Fatalf("%v %v: %v", path, tc.args, err)
			}
			if got := cmd.Flags().Lookup("xdp-mode").Value.String(); got != tc.want {
				t.Errorf("%v %v: --xdp-mode %q, want %q", path, tc.args, got, tc.want)
			}
		}
	}
	initFlag, agentFlag := subcommand(t, "node", "init").Flags().Lookup("xdp-mode"), subcommand(t, "agent").Flags().Lookup("xdp-mode")
	if initFlag.Usage != agentFlag.Usage || !strings.Contains(initFlag.Usage, "default auto") {
		t.Fatalf("--xdp-mode of node init and agent differ or hide the default:\n%s\n%s", initFlag.Usage, agentFlag.Usage)
	}
}

// Every agent flag the DaemonSet passes is one the agent knows, --xdp-mode
// among them.
func TestDeployManifestAgentFlags(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "podpath.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for doc := range strings.SplitSeq(string(b), "\n---\n") {
		var ds struct {
			Kind string
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Name string
							Args []string
						}
					}
				}
			}
		}
		if err := yaml.Unmarshal([]byte(doc), &ds); err != nil {
			t.Fatal(err)
		}
		for _, c := range ds.Spec.Template.Spec.Containers {
			if ds.Kind == "DaemonSet" && c.Name == "agent" {
				args = c.Args
			}
		}
	}
	agent := subcommand(t, "agent")
	if err := agent.ParseFlags(args); err != nil {
		t.Fatalf("the DaemonSet's agent args %v: %v", args, err)
	}
	if mode := agent.Flags().Lookup("xdp-mode").Value.String(); mode != loader.XDPAuto {
		t.Fatalf("the DaemonSet's agent runs --xdp-mode %q, want it said: auto", mode)
	}
}

// node init --xdp-mode through the real binary, in a network namespace of
// its own: native on a veth; on a bridge, which has no native XDP, a
// refusal naming the device and --xdp-mode generic; generic there; off
// attaching nothing; node status saying which mode each time.
func TestNodeInitXDPMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads the datapath into a network namespace")
	}
	podpath, netns := cliNode(t, "xdpmode")
	err := netns.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "up0"
		for _, l := range []netlink.Link{&netlink.Veth{LinkAttrs: la, PeerName: "up1"}, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}} {
			if err := netlink.LinkAdd(l); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	initArgs := []string{"node", "init", "--pod-cidr", "10.98.0.0/24", "--no-snat"}

	for _, step := range []struct {
		args    []string
		refused string // a part of the error; "" when init must succeed
		mode    string // the mode node status reports
		xdp     string // the XDP attachment: device and mode; "" for none
	}{
		{args: []string{"--uplink", "up0"}, mode: "auto"}, // a veth: no XDP
		{args: []string{"--uplink", "br0"}, mode: "auto"}, // no native XDP: none
		{args: []string{"--uplink", "up0", "--xdp-mode", "native"}, mode: "native", xdp: "up0 " + loader.ModeXDPNative},
		{args: []string{"--uplink", "br0", "--xdp-mode", "native"}, refused: "br0 (bridge) has no native XDP"},
		{args: []string{"--uplink", "br0", "--xdp-mode", "generic"}, mode: "generic", xdp: "br0 " + loader.ModeXDPGeneric},
		{args: []string{"--uplink", "up0", "--xdp-mode", "off"}, mode: "off"},
		{args: []string{"--uplink", "up0"}, mode: "off"}, // a re-init keeps the node's mode
		{args: []string{"--uplink", "up0", "--xdp-mode", "native"}, mode: "native", xdp: "up0 " + loader.ModeXDPNative},
		{args: []string{"--uplink", "up0", "--no-xdp"}, mode: "off"},
		{args: []string{"--uplink", "up0", "--xdp-mode", "driver"}, refused: `XDP mode "driver": want auto, native, generic or off`},
	} {
		out, err := podpath(append(initArgs, step.args...)...)
		if step.refused != "" {
			if err == nil || !strings.Contains(out, step.refused) {
				t.Fatalf("node init %v: %v\n%s\nwant a refusal saying %q", step.args, err, out, step.refused)
			}
			continue
		}
		if err != nil {
			t.Fatalf("node init %v: %v\n%s", step.args, err, out)
		}
		table, err := podpath("node", "status")
		if err != nil || !regexp.MustCompile(`(?m)^XDP mode:\s+`+step.mode+`$`).MatchString(table) {
			t.Fatalf("after node init %v, node status (%v) does not say XDP mode %s:\n%s", step.args, err, step.mode, table)
		}
		js, err := podpath("node", "status", "-o", "json")
		var st loader.Status
		if err != nil || json.Unmarshal([]byte(js), &st) != nil || st.Config.XDPMode != step.mode {
			t.Fatalf("after node init %v, node status -o json (%v):\n%s\nwant xdpMode %s", step.args, err, js, step.mode)
		}
		var xdp []string
		for _, a := range st.Attachments {
			if a.Program == maps.ProgXDPNetdev {
				xdp = append(xdp, a.Ifname+" "+a.Mode)
			}
		}
		if strings.Join(xdp, ", ") != step.xdp {
			t.Fatalf("after node init %v, XDP attached: %v, want %q", step.args, xdp, step.xdp)
		}
	}
}
