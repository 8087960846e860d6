package main

import (
	"context"
	"fmt"
	"log/slog"
)

// env is one run: its configuration, the results so far, and the
// pod-to-pod topologies shared by the stream, RR and CRR families.
type env struct {
	cfg    config
	srcDir string
	res    *results
	topos  []*topology
}

func (e *env) runFamily(ctx context.Context, fam string) error {
	switch fam {
	case famStream:
		return e.runStream(ctx)
	case famRR:
		return e.runRR(ctx, false)
	case famCRR:
		return e.runRR(ctx, true)
	case famProgRun:
		return e.runProgRun(ctx)
	case famCNI:
		return e.runCNI(ctx)
	case famMemory:
		return e.runMemory(ctx)
	}
	return fmt.Errorf("unknown family %s", fam)
}

func (e *env) close() error { return e.closeTopologies() }

// measurePath runs fn on a topology and returns how much the topology's
// path counter rose; a required counter that did not rise means the traffic
// did not take the contender's path, and the measurement is void.
func measurePath(t *topology, fn func() error) (uint64, error) {
	var before uint64
	if t.path != nil {
		var err error
		if before, err = t.path.read(); err != nil {
			return 0, fmt.Errorf("%s: read %s: %w", t.contender, t.path.name, err)
		}
	}
	if err := fn(); err != nil {
		return 0, err
	}
	if t.path == nil {
		return 0, nil
	}
	after, err := t.path.read()
	if err != nil {
		return 0, fmt.Errorf("%s: read %s: %w", t.contender, t.path.name, err)
	}
	delta := after - before
	if delta == 0 && t.path.required {
		return 0, fmt.Errorf("%s: %s did not rise: the traffic did not take %s's path", t.contender, t.path.name, t.contender)
	}
	slog.Debug("path counter", "contender", t.contender, t.path.name, delta)
	return delta, nil
}
