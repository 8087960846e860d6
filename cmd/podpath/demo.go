package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func newDemoCmd(g *globals) *cobra.Command {
	var (
		keep    bool
		cleanup bool
		podCIDR string
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a throwaway node with three pods and show the datapath at work",
		Long: `demo builds a node in its own network namespace on this machine, loads the
datapath there, creates three pods through the real podpath-cni binary (as a
container runtime would, through libcni), sends TCP and UDP between every pair,
sends one spoofed packet that must be dropped, puts a Service in front of two
pods, masquerades a pod's traffic to an outside host, then joins two more
nodes on an underlay, once routed and once over VXLAN, with pods talking
across; it prints the endpoints and counters, and removes everything again
(the first node stays with --keep).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cleanup {
				return demoCleanup(os.Stdout)
			}
			cidr, err := netip.ParsePrefix(podCIDR)
			if err != nil {
				return fmt.Errorf("--pod-cidr: %w", err)
			}
			return runDemo(cmd.Context(), os.Stdout, cidr, keep, g.verbose)
		},
	}
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the node and its pods running and print how to inspect them")
	cmd.Flags().BoolVar(&cleanup, "cleanup", false, "remove what an earlier `demo --keep` left running")
	cmd.Flags().StringVar(&podCIDR, "pod-cidr", "10.244.1.0/24", "pod CIDR of the demo node (addresses live only inside its namespaces)")
	return cmd
}

const demoNode = "demo"

var (
	demoNodeAddr    = netip.MustParsePrefix("10.254.0.1/24")
	demoOutsideAddr = netip.MustParsePrefix("10.254.0.2/24")
)

// demoService puts a ClusterIP and NodePort service in front of pod-b and
// pod-c, and has pod-a and the outside host use it.
func demoService(ctx context.Context, out io.Writer, node *sim.Node, pods []*sim.Pod) error {
	step(out, "A Service: ClusterIP 10.96.0.10:80 and NodePort 30080 -> pod-b, pod-c :8080 (no kube-proxy)")
	for _, p := range pods[1:] {
		var ln net.Listener
		if err := p.Do(func() (err error) {
			ln, err = net.Listen("tcp4", net.JoinHostPort(p.IP.String(), "8080"))
			return err
		}); err != nil {
			return err
		}
		defer ln.Close()
		go func(name string) {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, name)
				c.Close()
			}
		}(p.Name)
	}
	m, err := services.Open(node.PinRoot, node.StateDir)
	if err != nil {
		return err
	}
	defer m.Close()
	svc := services.Service{
		Namespace: "demo", Name: "web", Type: services.TypeNodePort,
		ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports:     []services.Port{{Protocol: services.ProtocolTCP, Port: 80, TargetPort: 8080, NodePort: 30080}},
		Backends:  []services.Backend{{IP: pods[1].IP, Ready: true, Local: true}, {IP: pods[2].IP, Ready: true, Local: true}},
	}
	if _, err := m.Upsert(ctx, svc); err != nil {
		return err
	}
	fetch := func(do func(func() error) error, addr string) (string, error) {
		var b []byte
		err := do(func() error {
			c, err := net.DialTimeout("tcp4", addr, 3*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			b, err = io.ReadAll(c)
			return err
		})
		return string(b), err
	}
	count := func(who string, do func(func() error) error, addr string) error {
		seen := map[string]int{}
		for range 20 {
			name, err := fetch(do, addr)
			if err != nil {
				return fmt.Errorf("%s -> %s: %w", who, addr, err)
			}
			seen[name]++
		}
		fmt.Fprintf(out, "  %s -> %s, 20 new connections: pod-b %d, pod-c %d\n", who, addr, seen["pod-b"], seen["pod-c"])
		return nil
	}
	if err := count("pod-a", pods[0].Do, "10.96.0.10:80"); err != nil {
		return err
	}
	if err := count("outside host", node.Outside.Do, net.JoinHostPort(node.Outside.NodeIP.String(), "30080")); err != nil {
		return err
	}
	flows, err := m.Conntrack().List(services.FlowFilter{})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  conntrack holds %d flow directions of the service (podpath ct list)\n", len(flows))
	return nil
}

// demoSNAT has a pod talk to the outside host, which sees only the node.
func demoSNAT(out io.Writer, node *sim.Node, pod *sim.Pod) error {
	step(out, "A pod reaches the outside: masqueraded by to_netdev (SNAT)")
	o := node.Outside
	var ln net.Listener
	if err := o.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(o.IP.String(), "8443"))
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	seen := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		seen <- c.RemoteAddr().String()
		io.WriteString(c, "hello from outside\n")
		c.Close()
	}()
	var reply []byte
	err := pod.Do(func() error {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		reply, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		return fmt.Errorf("%s -> outside: %w", pod.Name, err)
	}
	fmt.Fprintf(out, "  %s (%s) connected to %s and got %q\n", pod.Name, pod.IP, ln.Addr(), strings.TrimSpace(string(reply)))
	fmt.Fprintf(out, "  the outside host saw the connection come from %s: the node, not the pod\n", <-seen)
	all, err := maps.ReadPinnedNAT(node.PinRoot)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "  podpath nat list:")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "    DIR\tPROTO\tSOURCE\tDESTINATION\tTRANSLATED TO\tPACKETS")
	for _, e := range all {
		r := newNATRow(e)
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\t%d\n", r.Direction, r.Proto, r.Source, r.Destination, r.TranslatedTo, r.Packets)
	}
	return tw.Flush()
}

func runDemo(ctx context.Context, out io.Writer, cidr netip.Prefix, keep, verbose bool) (err error) {
	if ctx == nil {
		ctx = context.Background()
	}
	var opts []sim.Option
	if !verbose {
		// The story is on stdout; the plugin's and loader's logs only with -v.
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		opts = append(opts, sim.WithPluginStderr(io.Discard))
	}
	if dir, ok := pluginNextToMe(); ok {
		opts = append(opts, sim.WithCNIBin(dir))
	}
	// The node's uplink leads to one "outside" host; both addresses exist
	// only inside the demo's namespaces.
	opts = append(opts, sim.WithUplink(demoNodeAddr, demoOutsideAddr))
	step(out, "Creating a node in its own network namespace and loading the datapath")
	node, err := sim.NewNode(demoNode, cidr, opts...)
	if err != nil {
		return err
	}
	defer func() {
		if keep && err == nil {
			printKeep(out, node)
			return
		}
		step(out, "Cleaning up")
		if cerr := node.Close(); cerr != nil && err == nil {
			err = cerr
		}
		fmt.Fprintln(out, "  node, pods, pins and state removed")
	}()
	st, err := readStatus(node)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  netns %s, kernel %s, tc attach mode %s, pins under %s\n", filepath.Base(node.NS.Path()), st.Features.Kernel, st.Features.TCMechanism(), node.PinRoot)
	fmt.Fprintf(out, "  uplink %s %s to an outside host %s; no bridge, no iptables rules\n", sim.UplinkName, node.Outside.NodeIP, node.Outside.IP)

	step(out, "Creating three pods through the podpath-cni binary (CNI ADD, as a runtime does)")
	var pods []*sim.Pod
	for _, name := range []string{"pod-a", "pod-b", "pod-c"} {
		p, err := node.AddPod(ctx, name)
		if err != nil {
			return err
		}
		pods = append(pods, p)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  POD\tIP\tHOST VETH\tGATEWAY")
	for _, p := range pods {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", p.Name, p.IP, p.Result.Interfaces[0].Name, p.Result.IPs[0].Gateway)
	}
	tw.Flush()

	step(out, "Endpoints, read from the pinned map (podpath endpoint list)")
	if err := node.Do(func() error { return printEndpoints(out, node.PinRoot) }); err != nil {
		return err
	}

	step(out, "TCP and UDP between every pair of pods")
	before, err := node.Counters()
	if err != nil {
		return err
	}
	msg := bytes.Repeat([]byte("podpath "), 128)
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			rtt, err := sim.TCPEcho(from, to, msg)
			if err != nil {
				return err
			}
			urtt, err := sim.UDPEcho(from, to, msg[:64])
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "  %s -> %s: TCP connect + %d B echoed in %v, UDP echo in %v\n",
				from.Name, to.Name, len(msg), rtt.Round(time.Microsecond), urtt.Round(time.Microsecond))
		}
	}
	after, err := node.Counters()
	if err != nil {
		return err
	}
	fwd := delta(before, after, maps.HookFromPod, maps.ReasonForwardLocal)
	fmt.Fprintf(out, "  from_pod redirected %d packets straight into their destination pods\n", fwd)

	step(out, "A spoofed packet: pod-a sends UDP claiming another pod's address")
	spoofed := pods[2].IP
	if err := sim.SendSpoofedUDP(pods[0], spoofed, pods[1].IP, 9, []byte("spoof")); err != nil {
		return err
	}
	time.Sleep(50 * time.Millisecond)
	final, err := node.Counters()
	if err != nil {
		return err
	}
	drops := delta(after, final, maps.HookFromPod, maps.ReasonDropSpoofedIP)
	fmt.Fprintf(out, "  source %s from %s's veth: dropped by from_pod (drop_spoofed_ip +%d)\n", spoofed, pods[0].Name, drops)
	if drops == 0 {
		return fmt.Errorf("the spoofed packet was not counted as dropped")
	}

	if err := demoService(ctx, out, node, pods); err != nil {
		return err
	}
	if err := demoSNAT(out, node, pods[0]); err != nil {
		return err
	}
	var nodeOpts []sim.Option
	if !verbose {
		nodeOpts = append(nodeOpts, sim.WithPluginStderr(io.Discard))
	}
	if dir, ok := pluginNextToMe(); ok {
		nodeOpts = append(nodeOpts, sim.WithCNIBin(dir))
	}
	if err := demoCrossNode(ctx, out, nodeOpts); err != nil {
		return err
	}

	step(out, "Counters (podpath counters)")
	if final, err = node.Counters(); err != nil {
		return err
	}
	rows := make([]counterRow, 0, len(final))
	for _, c := range final {
		rows = append(rows, counterRow{c.Hook.String(), c.Reason.String(), c.Reason.IsDrop(), c.Packets, c.Bytes})
	}
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	printCounters(indent{tw}, rows)
	return tw.Flush()
}

// indent prefixes every line written through it with two spaces.
type indent struct{ w io.Writer }

func (i indent) Write(p []byte) (int, error) {
	s := strings.ReplaceAll(string(p), "\n", "\n  ")
	s = strings.TrimSuffix(s, "  ")
	if _, err := io.WriteString(i.w, "  "+s); err != nil {
		return 0, err
	}
	return len(p), nil
}

func step(out io.Writer, s string) { fmt.Fprintf(out, "\n== %s\n", s) }

func readStatus(n *sim.Node) (st *loader.Status, err error) {
	err = n.Do(func() error {
		st, err = loader.ReadStatus(n.PinRoot, n.StateDir)
		return err
	})
	return st, err
}

func delta(before, after []maps.Counter, hook maps.Hook, reason maps.Reason) uint64 {
	sum := func(cs []maps.Counter) (n uint64) {
		for _, c := range cs {
			if c.Hook == hook && c.Reason == reason {
				n += c.Packets
			}
		}
		return n
	}
	return sum(after) - sum(before)
}

func printEndpoints(out io.Writer, root string) error {
	eps, err := maps.OpenEndpoints(root)
	if err != nil {
		return err
	}
	defer eps.Close()
	list, err := eps.List()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  IP\tDEVICE\tIFINDEX\tPOD MAC\tGATEWAY MAC")
	for _, e := range list {
		r := newEndpointRow(e, nil)
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", r.IP, r.Device, r.Ifindex, r.PodMAC, r.GatewayMAC)
	}
	return tw.Flush()
}

// pluginNextToMe finds a podpath-cni installed beside this binary (make
// build puts both in bin/), so the demo needs no Go toolchain.
func pluginNextToMe() (string, bool) {
	exe, err := os.Executable()
	if err != nil {
		return "", false
	}
	dir := filepath.Dir(exe)
	if _, err := os.Stat(filepath.Join(dir, "podpath-cni")); err != nil {
		return "", false
	}
	return dir, true
}

func printKeep(out io.Writer, n *sim.Node) {
	step(out, "Left running")
	// nsenter, not `ip netns exec`: the latter remounts /sys and so hides
	// the BPF filesystem with the pins.
	self, err := os.Executable()
	if err != nil {
		self = "podpath"
	}
	fmt.Fprintf(out, `  nsenter --net=%[1]s %[4]s node status --pin-root %[2]s --state-dir %[3]s
  nsenter --net=%[1]s %[4]s endpoint list --pin-root %[2]s
  %[4]s counters --pin-root %[2]s
  bpftool map dump pinned %[2]s/endpoints
  %[4]s demo --cleanup      # removes it all
`, n.NS.Path(), n.PinRoot, n.StateDir, self)
}

// demoCleanup removes what `demo --keep` left: the namespaces (their veths
// go with them), the pins and the state directories.
func demoCleanup(out io.Writer) error {
	var removed int
	nsDir := "/run/netns"
	entries, _ := os.ReadDir(nsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "pp-"+demoNode+"-") {
			p := filepath.Join(nsDir, e.Name())
			unix.Unmount(p, unix.MNT_DETACH)
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("remove netns %s: %w", p, err)
			}
			removed++
		}
	}
	for _, pattern := range []string{
		filepath.Join(loader.BPFFSMount, "podpath-sim-"+demoNode+"-*"),
		filepath.Join(os.TempDir(), "podpath-sim-"+demoNode+"-*"),
	} {
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
			removed++
		}
	}
	fmt.Fprintf(out, "removed %d demo namespaces, pin roots and state directories\n", removed)
	return nil
}
