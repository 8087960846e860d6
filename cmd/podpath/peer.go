package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/podpath/podpath/loader"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

func newNodePeerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "peer",
		Short: "Other nodes whose pods this node's pods reach (the agent keeps them from Node objects)",
		Long: `Peers are the other nodes of the cluster: each one's address on the network
between the nodes and the pod CIDRs it owns. Pods reach their pods without
NAT, routed through the uplink or encapsulated in VXLAN as the node's
--routing says. Without Kubernetes, join two hosts by adding each as the
other's peer.`,
	}
	cmd.AddCommand(newPeerAddCmd(g), newPeerDeleteCmd(g), newPeerListCmd(g), newPeerApplyCmd(g))
	return cmd
}

// nodeConfig is the node's recorded configuration, which peers need.
func nodeConfig(g *globals) (loader.Config, error) {
	c, err := loader.ReadNodeConfig(g.stateDir)
	if err != nil {
		return c, fmt.Errorf("%w (run `podpath node init` first)", err)
	}
	return c, nil
}

func newPeerAddCmd(g *globals) *cobra.Command {
	var (
		addr  string
		cidrs []string
	)
	cmd := &cobra.Command{
		Use:     "add NAME --address IP --pod-cidr CIDR [--pod-cidr CIDR...]",
		Short:   "Add a peer, or replace the one of that name",
		Example: `  podpath node peer add node-b --address 192.168.1.12 --pod-cidr 10.244.2.0/24`,
		Args:    cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			p := loader.Peer{Name: args[0]}
			a, err := netip.ParseAddr(addr)
			if err != nil {
				return fmt.Errorf("--address: %w", err)
			}
			p.Address = a
			for _, s := range cidrs {
				c, err := netip.ParsePrefix(s)
				if err != nil {
					return fmt.Errorf("--pod-cidr: %w", err)
				}
				p.PodCIDRs = append(p.PodCIDRs, c)
			}
			c, err := nodeConfig(g)
			if err != nil {
				return err
			}
			return loader.AddPeer(c, p)
		},
	}
	cmd.Flags().StringVar(&addr, "address", "", "the peer's address on the network between the nodes (required)")
	cmd.Flags().StringSliceVar(&cidrs, "pod-cidr", nil, "a pod CIDR of the peer (required; repeat for several)")
	cmd.MarkFlagRequired("address")
	cmd.MarkFlagRequired("pod-cidr")
	return cmd
}

func newPeerDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Remove a peer: its pods are no longer reached through it",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			c, err := nodeConfig(g)
			if err != nil {
				return err
			}
			return loader.DeletePeer(c, args[0])
		},
	}
}

func newPeerListCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the peers",
		RunE: func(*cobra.Command, []string) error {
			c, err := nodeConfig(g)
			if err != nil {
				return err
			}
			peers, err := loader.ReadPeers(c.StateDir)
			if err != nil {
				return err
			}
			return printPeers(os.Stdout, c, peers, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func printPeers(w io.Writer, c loader.Config, peers []loader.Peer, output string) error {
	switch output {
	case "json":
		if peers == nil {
			peers = []loader.Peer{}
		}
		b, err := json.MarshalIndent(peers, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "NAME\tADDRESS\tPOD CIDRS\tROUTING\n")
		for _, p := range peers {
			var cs []string
			for _, x := range p.PodCIDRs {
				cs = append(cs, x.String())
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Address, strings.Join(cs, ","), c.Routing)
		}
		return tw.Flush()
	default:
		return fmt.Errorf("--output %q: want table or json", output)
	}
}

// errNoPeers is an input without a single peer: applied, it would cut the
// node off from every other node.
var errNoPeers = errors.New("no peers in the input (to remove every peer, pass --allow-empty)")

func newPeerApplyCmd(g *globals) *cobra.Command {
	var (
		file       string
		allowEmpty bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Make the node's peers exactly those of a file (YAML or JSON, - for stdin)",
		Example: `  podpath node peer apply -f peers.yaml
  # peers.yaml:
  peers:
  - name: node-b
    address: 192.168.1.12
    podCIDRs: [10.244.2.0/24]`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			data, err := readInput(file)
			if err != nil {
				return err
			}
			peers, err := decodePeers(data, allowEmpty)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			c, err := nodeConfig(g)
			if err != nil {
				return err
			}
			return loader.SetPeers(c, peers)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the peers file (required)")
	cmd.Flags().BoolVar(&allowEmpty, "allow-empty", false, "accept an input without peers: remove every peer")
	cmd.MarkFlagRequired("file")
	return cmd
}

// decodePeers reads every document of a peers file, each a list of peers
// or {"peers": [...]}, strictly (unknown fields are errors). Validation of
// the whole set is SetPeers'.
func decodePeers(data []byte, allowEmpty bool) ([]loader.Peer, error) {
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, err
	}
	var all []loader.Peer
	for i, doc := range docs {
		if blank(doc) {
			continue
		}
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, docError(len(docs), i+1, err)
		}
		j = bytes.TrimSpace(j)
		if string(j) == "null" {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.DisallowUnknownFields()
		var list []loader.Peer
		if j[0] == '[' {
			err = dec.Decode(&list)
		} else {
			var d struct {
				Peers []loader.Peer `json:"peers"`
			}
			err = dec.Decode(&d)
			list = d.Peers
		}
		if err != nil {
			return nil, docError(len(docs), i+1, err)
		}
		all = append(all, list...)
	}
	if len(all) == 0 && !allowEmpty {
		return nil, errNoPeers
	}
	return all, nil
}
