package loader

import (
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
