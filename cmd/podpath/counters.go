package main

import (
	"fmt"
	"io"

	"github.com/podpath/podpath/maps"
	"github.com/spf13/cobra"
)

func newCountersCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "counters",
		Short: "Packets and bytes per reason and hook, drops included",
		RunE: func(*cobra.Command, []string) error {
			cs, err := maps.ReadPinnedCounters(g.pinRoot)
			if err != nil {
				return err
			}
			rows := make([]counterRow, 0, len(cs))
			for _, c := range cs {
				rows = append(rows, counterRow{c.Hook.String(), c.Reason.String(), c.Reason.IsDrop(), c.Packets, c.Bytes})
			}
			return g.render(rows, func(w io.Writer) { printCounters(w, rows) })
		},
	}
}

type counterRow struct {
	Hook    string `json:"hook"`
	Reason  string `json:"reason"`
	Drop    bool   `json:"drop"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

func printCounters(w io.Writer, rows []counterRow) {
	fmt.Fprintln(w, "HOOK\tREASON\tPACKETS\tBYTES")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\n", r.Hook, r.Reason, r.Packets, r.Bytes)
	}
}
