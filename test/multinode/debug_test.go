package multinode_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/podpath/podpath/maps"
)

// counters are a node's datapath counters that are not zero, as
// "hook/reason" -> packets.
func nodeCounters(root string) (map[string]uint64, error) {
	m, err := maps.OpenPinned(root, maps.MapCounters)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	cs, err := maps.ReadCounters(m)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, c := range cs {
		if c.Packets > 0 {
			out[c.Hook.String()+"/"+c.Reason.String()] += c.Packets
		}
	}
	return out, nil
}

// logCountersOnFailure logs every node's counters when the test failed.
func (c *cluster) logCountersOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range c.nodes {
			cs, err := nodeCounters(n.PinRoot)
			if err != nil {
				t.Logf("node %s: counters: %v", n.Name, err)
				continue
			}
			var lines []string
			for k, v := range cs {
				lines = append(lines, fmt.Sprintf("%s=%d", k, v))
			}
			sort.Strings(lines)
			t.Logf("node %s counters: %s", n.Name, strings.Join(lines, " "))
		}
	})
}
