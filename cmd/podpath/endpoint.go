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
			names := maps.NetworkNames(g.pinRoot)
			rows := make([]endpointRow, 0, len(list))
			for _, e := range list {
				rows = append(rows, newEndpointRow(e, names))
			}
			return g.render(rows, func(w io.Writer) {
				fmt.Fprintln(w, "IP\tDEVICE\tIFINDEX\tPOD MAC\tGATEWAY MAC\tNETWORK\tNETNS COOKIE")
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%d\n", r.IP, r.Device, r.Ifindex, r.PodMAC, r.GatewayMAC, r.Network, r.NetnsCookie)
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
	// Network is the network's name, "-" for none, #id for one the node
	// does not know.
	Network   string `json:"network"`
	NetworkID uint32 `json:"networkID,omitempty"`
}

func newEndpointRow(e maps.Endpoint, networks map[uint32]string) endpointRow {
	r := endpointRow{
		IP:          e.IP.String(),
		Ifindex:     e.Info.Ifindex,
		PodMAC:      e.Info.PodMAC().String(),
		GatewayMAC:  e.Info.GatewayMAC().String(),
		NetnsCookie: e.Info.NetnsCookie,
		Flags:       e.Info.Flags,
		Device:      "?",
		Network:     "-",
		NetworkID:   e.Info.Network,
	}
	if id := e.Info.Network; id != 0 {
		r.Network = fmt.Sprintf("#%d", id)
		if name, ok := networks[id]; ok {
			r.Network = name
		}
	}
	if dev, err := net.InterfaceByIndex(int(e.Info.Ifindex)); err == nil {
		r.Device = dev.Name
	}
	return r
}
