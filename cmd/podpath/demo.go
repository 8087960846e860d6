package main

import "github.com/spf13/cobra"

func newDemoCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "demo", Short: "Run a throwaway node with three pods and show the datapath at work"}
}
