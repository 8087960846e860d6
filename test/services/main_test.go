// Package services_test checks the service control plane against the real
// datapath: the from_pod program run with BPF_PROG_RUN while services are
// rewritten, and a simulated node (internal/sim) whose pods reach each
// other through service frontends programmed by services.Manager. Traffic
// only flows between network namespaces the tests create. Needs root.
package services_test

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
		fmt.Fprintln(os.Stderr, "the service end-to-end tests need root (network namespaces, BPF): run them as root")
		os.Exit(1)
	}
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}
	os.Exit(m.Run())
}
