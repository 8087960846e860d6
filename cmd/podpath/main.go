// Command podpath is the CLI and node agent of the podpath datapath.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/spf13/cobra"
)

// globals are the flags every command shares: where the node's pins and
// state live, so several simulated nodes can share one machine.
type globals struct {
	pinRoot  string
	stateDir string
	output   string
	verbose  bool
}

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "podpath:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "podpath",
		Short:         "eBPF datapath for container hosts",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(*cobra.Command, []string) {
			level := slog.LevelInfo
			if g.verbose {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.pinRoot, "pin-root", maps.DefaultPinRoot, "where the node's maps, programs and links are pinned")
	pf.StringVar(&g.stateDir, "state-dir", loader.DefaultStateDir, "where the node's configuration and IPAM state live")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "debug logging")
	root.AddCommand(newNodeCmd(g), newStatusCmd(g), newEndpointCmd(g), newNetworkCmd(g), newPolicyCmd(g), newCountersCmd(g), newDemoCmd(g))
	root.AddCommand(newNATCmd(g))
	root.AddCommand(newServiceCmd(g), newCTCmd(g), newMonitorCmd(g), newTraceCmd(g))
	root.AddCommand(newAgentCmd(g))
	return root
}
