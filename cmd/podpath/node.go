package main

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/podpath/podpath/agent"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/spf13/cobra"
)

func newNodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "Load, inspect and remove this node's datapath"}
	cmd.AddCommand(newNodeInitCmd(g), newNodeResetCmd(g), newNodeStatusCmd(g), newNodePeerCmd(g))
	return cmd
}

func newNodeInitCmd(g *globals) *cobra.Command {
	var (
		podCIDR, snatAddr, snatPorts string
		sockLBCgroup                 string
		clusterCIDRs, nonMasq        []string
		c                            loader.Config
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Load the datapath, or replace its programs in place keeping the maps",
		Example: `  podpath node init --pod-cidr 10.244.1.0/24
  podpath node init --pod-cidr 10.244.1.0/24 --pin-root /sys/fs/bpf/node2 --state-dir /var/lib/podpath-node2`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if podCIDR == "" {
				// Re-running init (an upgrade) keeps the recorded CIDR.
				prev, err := loader.ReadNodeConfig(g.stateDir)
				if err != nil {
					return fmt.Errorf("--pod-cidr is required on first init")
				}
				c.PodCIDR = prev.PodCIDR
			} else {
				p, err := netip.ParsePrefix(podCIDR)
				if err != nil {
					return fmt.Errorf("--pod-cidr: %w", err)
				}
				c.PodCIDR = p
			}
			c.PinRoot, c.StateDir = g.pinRoot, g.stateDir
			if err := parseSNATFlags(&c, snatAddr, snatPorts, clusterCIDRs, nonMasq); err != nil {
				return err
			}
			if err := loader.Init(c); err != nil {
				return err
			}
			if sockLBCgroup != "" {
				if err := loader.AttachSocketLB(c.PinRoot, sockLBCgroup); err != nil {
					return err
				}
			}
			fmt.Printf("datapath loaded: pod CIDR %s, pins under %s\n", c.PodCIDR, c.PinRoot)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&podCIDR, "pod-cidr", "", "this node's pod address range (required on first init)")
	f.IntVar(&c.MTU, "mtu", 0, "MTU of pod interfaces (default: the first uplink's, less 50 with --routing vxlan; 1500 without uplink)")
	addRoutingFlags(cmd, &c)
	f.Uint32Var(&c.MaxEndpoints, "max-endpoints", loader.DefaultMaxEndpoints, "size of the endpoints map")
	f.StringSliceVar(&c.Uplinks, "uplink", nil, "device(s) traffic from the network arrives on (from_netdev and XDP are attached there; NodePort answers on their addresses)")
	f.Uint32Var(&c.MaxServices, "max-services", loader.DefaultMaxServices, "size of the services map (frontends)")
	f.Uint32Var(&c.MaxBackends, "max-backends", loader.DefaultMaxBackends, "size of the backends map")
	f.Uint32Var(&c.Conntrack, "conntrack-size", loader.DefaultConntrack, "size of the conntrack map (flow directions)")
	f.Uint32Var(&c.MaglevTableSize, "maglev-table-size", loader.DefaultMaglevTableSize, "entries of each Maglev table (a prime)")
	f.StringVar(&sockLBCgroup, "socket-lb-cgroup", "", "cgroup v2 whose processes reach services by socket-level load balancing (cgroup2 is mounted there if needed), e.g. "+loader.DefaultCgroup2Mount)
	f.BoolVar(&c.NoSNAT, "no-snat", false, "do not masquerade pods' traffic leaving through the uplinks")
	f.StringVar(&snatAddr, "snat-addr", "", "address pods' traffic leaves with (default: the first uplink's first IPv4 address)")
	f.StringVar(&snatPorts, "snat-ports", fmt.Sprintf("%d-%d", loader.DefaultSNATPortMin, loader.DefaultSNATPortMax), "port range for masqueraded flows")
	f.StringSliceVar(&clusterCIDRs, "cluster-cidr", nil, "cluster pod and service ranges: never masqueraded")
	f.StringSliceVar(&nonMasq, "non-masquerade-cidr", nil, "further destinations reached without masquerading")
	f.Uint32Var(&c.MaxNAT, "max-nat", loader.DefaultMaxNAT, "size of the SNAT map (two entries per flow)")
	f.StringVar(&c.TCAttach, "tc-attach", "auto", "tc attach mechanism: auto (tcx where the kernel has it), tcx, or tc (clsact + cls_bpf)")
	addXDPModeFlags(cmd, &c.XDPMode)
	return cmd
}

// addRoutingFlags gives node init and the agent the same flags for
// reaching other nodes' pods.
func addRoutingFlags(cmd *cobra.Command, c *loader.Config) {
	f := cmd.Flags()
	f.StringVar(&c.Routing, "routing", "", "how pods reach other nodes' pods: direct (routed through the uplink; nodes on one network segment) "+
		"or vxlan (encapsulated; any IP path) (default direct, or the mode the node already runs)")
	f.Uint16Var(&c.VXLANPort, "vxlan-port", loader.DefaultVXLANPort, "UDP port of the VXLAN overlay (every node the same)")
	f.Uint32Var(&c.VNI, "vni", loader.DefaultVNI, "VXLAN network identifier of the overlay (every node the same)")
	f.Uint32Var(&c.DropEventRate, "drop-event-rate", maps.DefaultDropEventRate, "drop events (podpath monitor) per second and CPU at most")
	f.Uint32Var(&c.DropEventBurst, "drop-event-burst", maps.DefaultDropEventBurst, "drop events a CPU may send at once after a quiet spell")
	f.BoolVar(&c.NoDropEvents, "no-drop-events", false, "send no drop events (counters still count every drop)")
}

// addXDPModeFlags gives node init and the agent the same --xdp-mode, and
// --no-xdp, the flag it replaces.
func addXDPModeFlags(cmd *cobra.Command, mode *string) {
	f := cmd.Flags()
	f.StringVar(mode, "xdp-mode", "", "XDP on the uplinks: auto (native where the driver has it, except on veths, whose peer would stop sending GSO packets; none elsewhere), "+
		"native (in the driver; a device without native XDP is refused), generic (emulated, works on any device) or off (default auto, or the mode the node already runs)")
	f.Var(noXDPFlag{mode}, "no-xdp", "do not attach the XDP program to the uplinks")
	f.Lookup("no-xdp").NoOptDefVal = "true"
	f.MarkDeprecated("no-xdp", "use --xdp-mode off")
}

// noXDPFlag is --no-xdp: --xdp-mode off under its former name.
type noXDPFlag struct{ mode *string }

func (f noXDPFlag) String() string {
	return strconv.FormatBool(f.mode != nil && *f.mode == loader.XDPOff)
}
func (f noXDPFlag) Type() string { return "bool" }

func (f noXDPFlag) Set(s string) error {
	off, err := strconv.ParseBool(s)
	if off {
		*f.mode = loader.XDPOff
	}
	return err
}

func parseSNATFlags(c *loader.Config, addr, ports string, cluster, nonMasq []string) error {
	if addr != "" {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return fmt.Errorf("--snat-addr: %w", err)
		}
		c.SNATAddr = a
	}
	lo, hi, ok := strings.Cut(ports, "-")
	min, err1 := strconv.ParseUint(lo, 10, 16)
	max, err2 := strconv.ParseUint(hi, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("--snat-ports %q: want FIRST-LAST, e.g. 1024-29999", ports)
	}
	c.SNATPortMin, c.SNATPortMax = uint16(min), uint16(max)
	for _, set := range []struct {
		flag string
		in   []string
		out  *[]netip.Prefix
	}{{"--cluster-cidr", cluster, &c.ClusterCIDRs}, {"--non-masquerade-cidr", nonMasq, &c.NonMasqCIDRs}} {
		for _, s := range set.in {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return fmt.Errorf("%s: %w", set.flag, err)
			}
			*set.out = append(*set.out, p)
		}
	}
	return nil
}

func newNodeResetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "reset",
		Short: "Detach every program, remove the pins, forget the node configuration and remove the CNI files the agent installed",
		RunE: func(*cobra.Command, []string) error {
			if err := loader.Reset(g.pinRoot, g.stateDir); err != nil {
				return err
			}
			if err := agent.Uninstall(g.stateDir); err != nil {
				return fmt.Errorf("remove what the agent installed: %w", err)
			}
			fmt.Printf("datapath removed from %s\n", g.pinRoot)
			return nil
		},
	}
}

func newNodeStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show what is loaded, attached where, and the kernel features found",
		RunE: func(*cobra.Command, []string) error {
			st, err := loader.ReadStatus(g.pinRoot, g.stateDir)
			if err != nil {
				return err
			}
			return g.render(st, func(w io.Writer) { printStatus(w, st, g.pinRoot) })
		},
	}
}

func printStatus(w io.Writer, st *loader.Status, root string) {
	f := st.Features
	fmt.Fprintf(w, "Kernel:\t%s\n", f.Kernel)
	fmt.Fprintf(w, "tc attach:\t%s (tcx available: %s)\n", f.TCMechanism(), yesNo(f.TCX))
	fmt.Fprintf(w, "Helpers:\tredirect_peer %s, redirect_neigh %s\n", yesNo(f.RedirectPeer), yesNo(f.RedirectNeigh))
	fmt.Fprintf(w, "Maps:\tlru_hash %s, ringbuf %s\n", yesNo(f.LRUHash), yesNo(f.RingBuf))
	if f.NetnsCookie {
		fmt.Fprintf(w, "Socket LB:\tavailable (netns cookies: yes)\n")
	} else {
		fmt.Fprintf(w, "Socket LB:\tnot available: %v\n", loader.ErrNoNetnsCookie)
	}
	if !st.Loaded {
		fmt.Fprintf(w, "Datapath:\tnot loaded under %s (run `podpath node init`)\n", root)
		return
	}
	fmt.Fprintf(w, "Datapath:\tloaded under %s\n", root)
	if c := st.Config; c != nil {
		fmt.Fprintf(w, "Pod CIDR:\t%s (gateway %s, MTU %d)\n", c.PodCIDR, c.Gateway, c.MTU)
		fmt.Fprintf(w, "Node attaches:\t%s\n", c.TCAttach)
		if len(c.Uplinks) > 0 {
			fmt.Fprintf(w, "Uplinks:\t%s\n", strings.Join(c.Uplinks, ", "))
			xdp := c.XDPMode
			if xdp == "" {
				xdp = "not recorded (initialised by an earlier podpath; ATTACHED below shows the mode)"
			}
			fmt.Fprintf(w, "XDP mode:\t%s\n", xdp)
			routing := c.Routing
			if routing == loader.RoutingVXLAN {
				routing += fmt.Sprintf(" (device %s, UDP port %d, VNI %d)", loader.OverlayDevice, c.VXLANPort, c.VNI)
			}
			fmt.Fprintf(w, "Routing:\t%s\n", routing)
			if c.NoSNAT {
				fmt.Fprintf(w, "SNAT:\toff\n")
			} else {
				fmt.Fprintf(w, "SNAT:\tports %d-%d, not to %v %v %v\n", c.SNATPortMin, c.SNATPortMax, c.PodCIDR, c.ClusterCIDRs, c.NonMasqCIDRs)
			}
		}
	}
	fmt.Fprintln(w, "\nPROGRAM\tID\tTAG\tTYPE")
	for _, p := range st.Programs {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", p.Name, p.ID, p.Tag, p.Type)
	}
	fmt.Fprintln(w, "\nMAP\tID\tTYPE\tENTRIES\tMAX\tKEY\tVALUE\tMEMLOCK")
	for _, m := range st.Maps {
		fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\n", m.Name, m.ID, m.Type, m.Entries, m.MaxEntries, m.KeySize, m.ValueSize, m.Memlock)
	}
	for _, a := range st.CgroupAttachments {
		fmt.Fprintf(w, "Socket LB:\t%s on cgroup %s\n", a.Program, a.Cgroup)
	}
	fmt.Fprintln(w, "\nATTACHED\tDEVICE\tIFINDEX\tHOOK\tMODE\tPROG ID")
	for _, a := range st.Attachments {
		hook := string(a.Direction)
		if hook == "" {
			hook = "xdp"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%d\n", a.Program, a.Ifname, a.Ifindex, hook, a.Mode, a.ProgramID)
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
