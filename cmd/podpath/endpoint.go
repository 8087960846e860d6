package main

import (
	"fmt"
	"io"
	"net"

	"github.com/podpath/podpath/maps"
	"github.com/spf13/cobra"
)

func newEndpointCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "endpoint", Aliases: []string{"ep"}, Short: "Pods on this node as the datapath sees them"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List endpoints, read straight from the pinned map (no daemon needed)",
		RunE: func(*cobra.Command, []string) error {
			list, err := maps.ListEndpoints(g.pinRoot)
			if err != nil {
				return err
			}
			rows := make([]endpointRow, 0, len(list))
			for _, e := range list {
				rows = append(rows, newEndpointRow(e))
			}
			return g.render(rows, func(w io.Writer) {
				fmt.Fprintln(w, "IP\tDEVICE\tIFINDEX\tPOD MAC\tGATEWAY MAC\tNETNS COOKIE")
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%d\n", r.IP, r.Device, r.Ifindex, r.PodMAC, r.GatewayMAC, r.NetnsCookie)
				}
			})
		},
	})
	return cmd
}

type endpointRow struct {
	IP          string `json:"ip"`
	Device      string `json:"device"`
	Ifindex     uint32 `json:"ifindex"`
	PodMAC      string `json:"podMAC"`
	GatewayMAC  string `json:"gatewayMAC"`
	NetnsCookie uint64 `json:"netnsCookie"`
	Flags       uint32 `json:"flags"`
}

func newEndpointRow(e maps.Endpoint) endpointRow {
	r := endpointRow{
		IP:          e.IP.String(),
		Ifindex:     e.Info.Ifindex,
		PodMAC:      e.Info.PodMAC().String(),
		GatewayMAC:  e.Info.GatewayMAC().String(),
		NetnsCookie: e.Info.NetnsCookie,
		Flags:       e.Info.Flags,
		Device:      "?",
	}
	if dev, err := net.InterfaceByIndex(int(e.Info.Ifindex)); err == nil {
		r.Device = dev.Name
	}
	return r
}
