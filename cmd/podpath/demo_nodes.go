package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
)

// demoCrossNode builds two more nodes on one underlay (a bridge in a
// namespace of its own playing the switch), once per routing mode, with a
// pod each, and has the pods talk across.
func demoCrossNode(ctx context.Context, out io.Writer, opts []sim.Option) error {
	for _, mode := range []struct {
		routing, how string
		reason       maps.Reason
	}{
		{loader.RoutingDirect, "routed out of the uplink with the other node as next hop (bpf_fib_lookup, bpf_redirect_neigh)", maps.ReasonForwardRouted},
		{loader.RoutingVXLAN, "encapsulated in VXLAN towards the other node (bpf_skb_set_tunnel_key, redirect to " + loader.OverlayDevice + ")", maps.ReasonForwardTunnel},
	} {
		step(out, fmt.Sprintf("Two nodes, routing %s: a pod on each", mode.routing))
		if err := demoTwoNodes(ctx, out, opts, mode.routing, mode.how, mode.reason); err != nil {
			return fmt.Errorf("routing %s: %w", mode.routing, err)
		}
	}
	return nil
}

func demoTwoNodes(ctx context.Context, out io.Writer, opts []sim.Option, routing, how string, reason maps.Reason) (err error) {
	u, err := sim.NewUnderlay("demo-"+routing, netip.MustParsePrefix("192.168.254.0/24"), 0)
	if err != nil {
		return err
	}
	defer u.Close()
	var (
		nodes []*sim.Node
		pods  []*sim.Pod
	)
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()
	for i := range 2 {
		o := append(append([]sim.Option{}, opts...), sim.WithUnderlay(u, u.Addr(i+1)),
			sim.WithLoaderConfig(func(c *loader.Config) { c.Routing = routing }))
		n, err := sim.NewNode(fmt.Sprintf("demo-%s-%d", routing, i+1), netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", 21+i)), o...)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
		p, err := n.AddPod(ctx, fmt.Sprintf("pod-%d", i+1))
		if err != nil {
			return err
		}
		pods = append(pods, p)
		fmt.Fprintf(out, "  node %d: address %s on the underlay, pod CIDR %s, pod MTU %d; %s has %s\n",
			i+1, n.Address, n.PodCIDR, n.MTU, p.Name, p.IP)
	}
	if err := sim.JoinAll(nodes...); err != nil {
		return err
	}
	fmt.Fprintln(out, "  each node is the other's peer (podpath node peer add; the agent does it from Node objects)")
	before, err := nodes[0].Counters()
	if err != nil {
		return err
	}
	for _, pair := range [][2]*sim.Pod{{pods[0], pods[1]}, {pods[1], pods[0]}} {
		rtt, err := sim.TCPEcho(pair[0], pair[1], []byte("across nodes"))
		if err != nil {
			return err
		}
		urtt, err := sim.UDPEcho(pair[0], pair[1], []byte("across nodes"))
		if err != nil {
			return err
		}
		ln, err := sim.ServeTCP(pair[1].Do, net.JoinHostPort(pair[1].IP.String(), "8080"),
			func(c net.Conn) string { return c.RemoteAddr().(*net.TCPAddr).IP.String() })
		if err != nil {
			return err
		}
		saw, err := sim.FetchTCP(pair[0].Do, net.JoinHostPort(pair[1].IP.String(), "8080"), 5*time.Second)
		ln.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "  %s (%s) -> %s (%s): TCP echo in %v, UDP echo in %v; %s saw the client as %s\n",
			pair[0].Name, pair[0].IP, pair[1].Name, pair[1].IP, rtt.Round(time.Microsecond), urtt.Round(time.Microsecond), pair[1].Name, saw)
		if saw != pair[0].IP.String() {
			return fmt.Errorf("%s saw %s, not the client pod's address", pair[1].Name, saw)
		}
	}
	after, err := nodes[0].Counters()
	if err != nil {
		return err
	}
	n := delta(before, after, maps.HookFromPod, reason)
	fmt.Fprintf(out, "  node 1's from_pod sent %d packets on, %s\n", n, how)
	if n == 0 {
		return fmt.Errorf("from_pod counted no %s packet", reason)
	}
	return nil
}
