package sim

import "github.com/podpath/podpath/maps"

// Counters reads the node's packet counters, summed over CPUs.
func (n *Node) Counters() ([]maps.Counter, error) {
	return maps.ReadPinnedCounters(n.PinRoot)
}

// Packets is how many packets the node counted under reason at hook.
func (n *Node) Packets(hook maps.Hook, reason maps.Reason) (uint64, error) {
	cs, err := n.Counters()
	if err != nil {
		return 0, err
	}
	for _, c := range cs {
		if c.Hook == hook && c.Reason == reason {
			return c.Packets, nil
		}
	}
	return 0, nil
}
