package main

import (
	"fmt"
	"io"

	"github.com/podpath/podpath/maps"
	"github.com/spf13/cobra"
)

func newNetworkCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "network", Aliases: []string{"net"},
		Short: "Networks (isolation domains) on this node: a pod reaches the pods of its own network and of those it reaches"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List networks with what they reach and their pods on this node, from the pinned maps",
		RunE: func(*cobra.Command, []string) error {
			rows, err := networkRows(g.pinRoot)
			if err != nil {
				return err
			}
			return g.render(rows, func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tID\tREACHES\tENDPOINTS")
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%d\t%s\t%d\n", r.Name, r.ID, maps.FormatReaches(r.Reaches), r.Endpoints)
				}
			})
		},
	})
	var reaches []string
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Make a network and what it reaches known on this node, as the CNI plugin does at ADD; needed where the network has no pod but other nodes' pods of it talk to this node's",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return withNetworks(g.pinRoot, func(nws *maps.Networks) error {
				id, err := nws.Put(args[0], reaches)
				if err != nil {
					return err
				}
				fmt.Printf("network %s: id %d, reaches %s\n", args[0], id, maps.FormatReaches(reaches))
				return nil
			})
		},
	}
	add.Flags().StringSliceVar(&reaches, "reaches", nil, `networks this one's pods exchange packets with, both ways ("*": every network); replaces what it reached before`)
	cmd.AddCommand(add)
	cmd.AddCommand(&cobra.Command{
		Use:   "delete NAME",
		Short: "Forget a network and the reaches it declared (its pods, if any are left, then reach no other network)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return withNetworks(g.pinRoot, func(nws *maps.Networks) error { return nws.Delete(args[0]) })
		},
	})
	return cmd
}

func withNetworks(root string, fn func(*maps.Networks) error) error {
	nws, err := maps.OpenNetworks(root)
	if err != nil {
		return err
	}
	defer nws.Close()
	return fn(nws)
}

type networkRow struct {
	maps.Network
	Endpoints int `json:"endpoints"`
}

// networkRows lists the networks with their endpoints counted; endpoints
// of no network, or of one the node does not know, come last as "-".
func networkRows(root string) ([]networkRow, error) {
	nws, err := maps.OpenNetworks(root)
	if err != nil {
		return nil, err
	}
	defer nws.Close()
	list, err := nws.List()
	if err != nil {
		return nil, err
	}
	eps, err := maps.ListEndpoints(root)
	if err != nil {
		return nil, err
	}
	count := map[uint32]int{}
	for _, e := range eps {
		count[e.Info.Network]++
	}
	rows := make([]networkRow, 0, len(list)+1)
	for _, n := range list {
		rows = append(rows, networkRow{Network: n, Endpoints: count[n.ID]})
		delete(count, n.ID)
	}
	other := 0
	for _, c := range count {
		other += c
	}
	if other > 0 {
		rows = append(rows, networkRow{Network: maps.Network{Name: "-"}, Endpoints: other})
	}
	return rows, nil
}
