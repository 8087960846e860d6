package main

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/podpath/podpath/maps"
	"github.com/spf13/cobra"
)

func newNATCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "nat", Short: "Egress SNAT: mappings, statistics, garbage collection"}
	var f natFilter
	list := &cobra.Command{
		Use:   "list",
		Short: "List masqueraded flows, read straight from the pinned map",
		Example: `  podpath nat list
  podpath nat list --pod 10.244.1.5 --proto tcp -o json`,
		RunE: func(*cobra.Command, []string) error {
			if err := f.parse(); err != nil {
				return err
			}
			all, err := maps.ReadPinnedNAT(g.pinRoot)
			if err != nil {
				return err
			}
			rows := []natRow{}
			for _, e := range all {
				if f.match(e) {
					rows = append(rows, newNATRow(e))
				}
			}
			return g.render(rows, func(w io.Writer) {
				fmt.Fprintln(w, "DIR\tPROTO\tSOURCE\tDESTINATION\tTRANSLATED TO\tPACKETS\tBYTES\tEXPIRES")
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", r.Direction, r.Proto, r.Source, r.Destination, r.TranslatedTo, r.Packets, r.Bytes, r.Expires)
				}
			})
		},
	}
	lf := list.Flags()
	lf.StringVar(&f.pod, "pod", "", "only flows of this pod address")
	lf.StringVar(&f.dst, "destination", "", "only flows to this address")
	lf.StringVar(&f.proto, "proto", "", "only tcp, udp or icmp")
	lf.BoolVar(&f.expired, "expired", false, "only expired mappings")

	stats := &cobra.Command{
		Use:   "stats",
		Short: "Port allocations, retries, reuse of expired mappings and failures",
		RunE: func(*cobra.Command, []string) error {
			m, err := maps.OpenPinned(g.pinRoot, maps.MapNatStats)
			if err != nil {
				return err
			}
			defer m.Close()
			st, err := maps.ReadNATStats(m)
			if err != nil {
				return err
			}
			return g.render(st, func(w io.Writer) {
				names := make([]string, 0, len(st))
				for n := range st {
					names = append(names, n)
				}
				sort.Strings(names)
				for _, n := range names {
					fmt.Fprintf(w, "%s\t%d\n", n, st[n])
				}
			})
		},
	}
	gc := &cobra.Command{
		Use:   "gc",
		Short: "Delete expired mappings (the datapath also reuses them by itself)",
		RunE: func(*cobra.Command, []string) error {
			n, err := maps.ReapExpiredPinnedNAT(g.pinRoot)
			if err != nil {
				return err
			}
			fmt.Printf("removed %d expired mappings\n", n)
			return nil
		},
	}
	cmd.AddCommand(list, stats, gc)
	return cmd
}

type natFilter struct {
	pod, dst, proto string
	expired         bool
	podIP, dstIP    netip.Addr
	protoNum        uint8
}

func (f *natFilter) parse() error {
	var err error
	if f.pod != "" {
		if f.podIP, err = netip.ParseAddr(f.pod); err != nil {
			return fmt.Errorf("--pod: %w", err)
		}
	}
	if f.dst != "" {
		if f.dstIP, err = netip.ParseAddr(f.dst); err != nil {
			return fmt.Errorf("--destination: %w", err)
		}
	}
	if f.proto != "" {
		n, ok := protoNumbers[strings.ToLower(f.proto)]
		if !ok {
			return fmt.Errorf("--proto %q: want tcp, udp or icmp", f.proto)
		}
		f.protoNum = n
	}
	return nil
}

func (f *natFilter) match(e maps.NATMapping) bool {
	pod, peer := e.Src.Addr(), e.Dst.Addr()
	if e.Reverse {
		pod, peer = e.To.Addr(), e.Src.Addr()
	}
	return (!f.podIP.IsValid() || pod == f.podIP) &&
		(!f.dstIP.IsValid() || peer == f.dstIP) &&
		(f.protoNum == 0 || e.Proto == f.protoNum) &&
		(!f.expired || e.ExpiresIn < 0)
}

var protoNumbers = map[string]uint8{"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}

func protoName(p uint8) string {
	for n, v := range protoNumbers {
		if v == p {
			return n
		}
	}
	return fmt.Sprint(p)
}

type natRow struct {
	Direction    string `json:"direction"`
	Proto        string `json:"proto"`
	Source       string `json:"source"`
	Destination  string `json:"destination"`
	TranslatedTo string `json:"translatedTo"`
	Packets      uint64 `json:"packets"`
	Bytes        uint64 `json:"bytes"`
	Expires      string `json:"expires"`
	ExpiresInSec int64  `json:"expiresInSeconds"`
}

func newNATRow(e maps.NATMapping) natRow {
	r := natRow{
		Direction: "out", Proto: protoName(e.Proto),
		Source: e.Src.String(), Destination: e.Dst.String(), TranslatedTo: e.To.String(),
		Packets: e.Packets, Bytes: e.Bytes,
		Expires: e.ExpiresIn.Round(time.Second).String(), ExpiresInSec: int64(e.ExpiresIn / time.Second),
	}
	if e.Reverse {
		r.Direction = "reply"
	}
	if e.ExpiresIn < 0 {
		r.Expires = "expired"
	}
	return r
}
