package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
)

// dropEventLimit is the node's drop events rate limit per CPU: events per
// second and burst, 0 for none.
func (c Config) dropEventLimit() (rate, burst uint32) {
	if c.NoDropEvents {
		return 0, 0
	}
	rate, burst = c.DropEventRate, c.DropEventBurst
	if rate == 0 {
		rate = maps.DefaultDropEventRate
	}
	if burst == 0 {
		burst = maps.DefaultDropEventBurst
	}
	return rate, burst
}

// configureEvents writes the drop events' rate limit to event_config.
func configureEvents(c Config) error {
	m, err := maps.OpenPinned(c.PinRoot, maps.MapEventConfig)
	if err != nil {
		return err
	}
	defer m.Close()
	rate, burst := c.dropEventLimit()
	return maps.WriteEventConfig(m, rate, burst)
}

// tracingOn says whether the node's event_config has tracing on; false
// for a node not initialised yet.
func tracingOn(root string) bool {
	cfg, err := maps.ReadEventConfig(root)
	return err == nil && maps.TraceOf(cfg).On()
}

// setTraceCapable builds spec's programs with the trace events' hooks (on)
// or without (the verifier removes them).
func setTraceCapable(spec *ebpf.CollectionSpec, on bool) error {
	v, ok := spec.Variables[maps.VarTraceCapable]
	if !ok {
		return nil
	}
	val := uint32(0)
	if on {
		val = 1
	}
	if err := v.Set(val); err != nil {
		return fmt.Errorf("set %s: %w", maps.VarTraceCapable, err)
	}
	return nil
}

// SetTracing switches trace events as t says (the zero Trace: off) on the
// node recorded in stateDir. Switching tracing on or off reloads the
// node's programs in place, as node init does with the node's recorded
// configuration: with tracing off they are built without its hooks and
// pay nothing for it. Changing only what is traced writes event_config.
func SetTracing(stateDir string, t maps.Trace) error {
	c, err := ReadNodeConfig(stateDir)
	if err != nil {
		return err
	}
	was := tracingOn(c.PinRoot)
	if err := maps.SetTrace(c.PinRoot, t); err != nil {
		return err
	}
	if was == t.On() {
		return nil
	}
	if err := Init(c); err != nil {
		if !was {
			// Tracing on without the programs that raise it: off again.
			if rerr := maps.SetTrace(c.PinRoot, maps.Trace{}); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return fmt.Errorf("reload the programs to switch tracing: %w", err)
	}
	return nil
}
