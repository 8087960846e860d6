// Package multinode_test builds clusters of simulated nodes on one
// underlay (a Linux bridge in a namespace of its own) and checks that pods
// reach each other, and Services, across nodes, in both routing modes.
package multinode_test

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the multi-node end-to-end tests need root (network namespaces, BPF): run them as root")
		os.Exit(1)
	}
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}
	code := m.Run()
	if err := closeSharedClusters(); err != nil {
		fmt.Fprintln(os.Stderr, "remove the shared clusters:", err)
		code = 1
	}
	if cniDir != "" {
		os.RemoveAll(cniDir)
	}
	os.Exit(code)
}
