package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/podpath/podpath/trace"
	"github.com/spf13/cobra"
)

func newTraceCmd(g *globals) *cobra.Command {
	var (
		from, to, proto, flags string
		sport                  uint16
		size                   int
	)
	cmd := &cobra.Command{
		Use:   "trace --from <pod or ip> --to <ip:port> --proto tcp|udp|icmp",
		Short: "What the datapath would do with a packet: each hook it passes, the lookups, the rewrites and the verdict, changing nothing",
		Long: `trace builds the packet, runs it with BPF_PROG_RUN through this node's
programs built for the dry run (the same C, every write to a shared map
compiled out) against the node's live maps, hook after hook as the packet
would travel, and asks the kernel's routing where the node's stack would
send it between hooks. No conntrack entry, NAT mapping, counter or event
of the node changes.

--from is a pod of this node (its address or host-side device), one of the
node's addresses (the node's own traffic), or any other IPv4 address (a
packet arriving from the network: another node's pod arrives through the
overlay or the uplink, anything else through the uplink routing to it).`,
		Example: `  podpath trace --from 10.244.1.5 --to 10.96.0.10:53 --proto udp
  podpath trace --from 192.0.2.7 --to 172.18.0.2:30080 --proto tcp
  podpath trace --from 10.244.1.5 --to 10.244.2.9 --proto icmp -o json`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			dst, err := parseTraceDest(to, proto)
			if err != nil {
				return err
			}
			tcpFlags, err := parseTCPFlags(flags)
			if err != nil {
				return err
			}
			t, err := trace.Open(g.stateDir)
			if err != nil {
				return err
			}
			defer t.Close()
			res, err := t.Trace(trace.Request{From: from, To: dst, Proto: proto, SrcPort: sport, TCPFlags: tcpFlags, Size: size})
			if err != nil {
				return err
			}
			return g.render(res, func(w io.Writer) { printTrace(w, res) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "where the packet starts: a pod (address or host-side device), a node address, or an address outside")
	f.StringVar(&to, "to", "", "destination address and port (ICMP: the address)")
	f.StringVar(&proto, "proto", "tcp", "tcp, udp or icmp (an echo request)")
	f.Uint16Var(&sport, "sport", trace.DefaultSrcPort, "source port (ICMP: the echo identifier)")
	f.StringVar(&flags, "tcp-flags", "syn", "TCP flags, comma-separated: syn, ack, fin, rst, psh")
	f.IntVar(&size, "size", 0, "payload bytes")
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

func parseTraceDest(to, proto string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(to); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(to)
	if err != nil || proto != "icmp" {
		return netip.AddrPort{}, fmt.Errorf("--to %q: want address:port (an address alone for icmp)", to)
	}
	return netip.AddrPortFrom(a, 0), nil
}

func parseTCPFlags(s string) (uint8, error) {
	bits := map[string]uint8{"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10}
	var f uint8
	for _, name := range strings.Split(s, ",") {
		b, ok := bits[strings.ToLower(strings.TrimSpace(name))]
		if !ok {
			return 0, fmt.Errorf("--tcp-flags %q: flags are syn, ack, fin, rst, psh", s)
		}
		f |= b
	}
	return f, nil
}

func printTrace(w io.Writer, r *trace.Result) {
	for i, h := range r.Hops {
		fmt.Fprintf(w, "%d. %s on %s\n", i+1, h.Hook, h.Device)
		fmt.Fprintf(w, "   in:  %s\n", h.In)
		if h.Out != h.In {
			fmt.Fprintf(w, "   out: %s\n", h.Out)
		}
		for _, l := range h.Lookups {
			fmt.Fprintf(w, "   - %s\n", l)
		}
		fmt.Fprintf(w, "   verdict: %s (%s); %s\n", h.Action, h.Reason, h.Next)
	}
	fmt.Fprintf(w, "%s %s\n", r.Outcome, r.Where)
	fmt.Fprintf(w, "as: %s\n", r.Final)
	if r.Outer != nil {
		fmt.Fprintf(w, "in: %s (VXLAN)\n", r.Outer)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}
