package main

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/policy"
	"github.com/spf13/cobra"
)

func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Network policy as the datapath enforces it: pods, directions, rules"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Pods of this node a policy selects, with the directions enforced and their rules' count",
		RunE: func(*cobra.Command, []string) error {
			eps, err := policyEndpoints(g)
			if err != nil {
				return err
			}
			return g.render(eps, func(w io.Writer) {
				fmt.Fprintln(w, "ADDRESS\tPOD\tENFORCED\tINGRESS RULES\tEGRESS RULES")
				for _, e := range eps {
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\n", e.Address, e.Pod, e.Enforced, len(e.Ingress), len(e.Egress))
				}
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "get POD",
		Short: "A pod's resolved rules (POD: its address or namespace/name), peers named by their labels",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			eps, err := policyEndpoints(g)
			if err != nil {
				return err
			}
			i := slices.IndexFunc(eps, func(e policyEndpoint) bool { return e.Address == args[0] || e.Pod == args[0] })
			if i < 0 {
				return fmt.Errorf("%s: no policy selects such a pod on this node (podpath policy list)", args[0])
			}
			e := eps[i]
			return g.render(e, func(w io.Writer) {
				fmt.Fprintf(w, "pod %s (%s), enforced: %s\n", e.Pod, e.Address, e.Enforced)
				fmt.Fprintln(w, "DIRECTION\tPEER\tPROTOCOL\tPORTS\tCONNECTIONS")
				for _, dir := range []struct {
					name  string
					rules []policyRuleRow
				}{{"ingress", e.Ingress}, {"egress", e.Egress}} {
					for _, r := range dir.rules {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", dir.name, r.Peer, r.Protocol, r.Ports, r.Connections)
					}
				}
			})
		},
	})
	return cmd
}

type policyEndpoint struct {
	Address  string          `json:"address"`
	Pod      string          `json:"pod"`
	Enforced string          `json:"enforced"`
	Ingress  []policyRuleRow `json:"ingress"`
	Egress   []policyRuleRow `json:"egress"`
}

type policyRuleRow struct {
	Peer        string `json:"peer"`
	Identity    uint32 `json:"identity"`
	Protocol    string `json:"protocol"`
	Ports       string `json:"ports"`
	Connections uint64 `json:"connections"`
}

// policyEndpoints reads the endpoints with policy flags and their keys,
// merging each rule's port prefixes back into ranges.
func policyEndpoints(g *globals) ([]policyEndpoint, error) {
	pol, err := maps.OpenPolicy(g.pinRoot)
	if err != nil {
		return nil, err
	}
	defer pol.Close()
	flags, err := pol.Enforcement()
	if err != nil {
		return nil, err
	}
	keys, err := pol.Keys()
	if err != nil {
		return nil, err
	}
	names, err := policy.ReadNames(g.stateDir)
	if err != nil {
		return nil, err
	}
	type group struct {
		dir, proto uint8
		id         uint32
	}
	type span struct {
		first, last uint16
		conns       uint64
	}
	byEP := map[netip.Addr]map[group][]span{}
	for k, n := range keys {
		r := k.Rule()
		gr := group{r.Direction, r.Proto, r.Identity}
		if byEP[r.Endpoint] == nil {
			byEP[r.Endpoint] = map[group][]span{}
		}
		byEP[r.Endpoint][gr] = append(byEP[r.Endpoint][gr], span{r.PortFirst, r.PortLast, n})
	}
	var out []policyEndpoint
	for ip, f := range flags {
		e := policyEndpoint{Address: ip.String(), Pod: names.Pods[ip], Enforced: enforcedString(f)}
		if e.Pod == "" {
			e.Pod = "-"
		}
		for gr, spans := range byEP[ip] {
			slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.first, b.first) })
			var merged []span
			for _, s := range spans {
				if n := len(merged); n > 0 && merged[n-1].last != 65535 && merged[n-1].last+1 == s.first {
					merged[n-1].last = s.last
					merged[n-1].conns += s.conns
					continue
				}
				merged = append(merged, s)
			}
			for _, s := range merged {
				row := policyRuleRow{Peer: names.Identity(gr.id), Identity: gr.id, Protocol: strings.ToUpper(protoName(gr.proto)), Ports: "any", Connections: s.conns}
				switch {
				case gr.proto == 0:
					row.Protocol = "any"
				case s.first == 0 && s.last == 0:
				case s.first == s.last:
					row.Ports = fmt.Sprint(s.first)
				default:
					row.Ports = fmt.Sprintf("%d-%d", s.first, s.last)
				}
				if gr.dir == maps.PolicyEgress {
					e.Egress = append(e.Egress, row)
				} else {
					e.Ingress = append(e.Ingress, row)
				}
			}
		}
		for _, rows := range [][]policyRuleRow{e.Ingress, e.Egress} {
			slices.SortFunc(rows, func(a, b policyRuleRow) int {
				return cmp.Or(strings.Compare(a.Peer, b.Peer), strings.Compare(a.Protocol, b.Protocol), strings.Compare(a.Ports, b.Ports))
			})
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b policyEndpoint) int { return strings.Compare(a.Address, b.Address) })
	return out, nil
}

func enforcedString(f uint32) string {
	var parts []string
	if f&maps.EndpointPolicyIngress != 0 {
		parts = append(parts, "ingress")
	}
	if f&maps.EndpointPolicyEgress != 0 {
		parts = append(parts, "egress")
	}
	if f&maps.EndpointPolicyPending != 0 {
		parts = append(parts, "pending")
	}
	return strings.Join(parts, ",")
}
