package sim

import (
	"fmt"
	"sort"
	"strings"

	"github.com/podpath/podpath/maps"
)

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

// PacketCounts is the node's packet counters at one moment, keyed
// "hook/reason".
type PacketCounts map[string]uint64

// PacketCounts reads the node's packet counters.
func (n *Node) PacketCounts() (PacketCounts, error) {
	cs, err := n.Counters()
	if err != nil {
		return nil, err
	}
	out := PacketCounts{}
	for _, c := range cs {
		out[fmt.Sprintf("%s/%s", c.Hook, c.Reason)] = c.Packets
	}
	return out, nil
}

// Since lists the counters that grew since before, with how much, as
// "from_pod/forward_local +6, to_pod/svc_reply +6".
func (now PacketCounts) Since(before PacketCounts) string {
	var out []string
	for k, v := range now {
		if v > before[k] {
			out = append(out, fmt.Sprintf("%s +%d", k, v-before[k]))
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// Drops lists the drop counters that are not zero, as Since does.
func (now PacketCounts) Drops() string {
	drops := PacketCounts{}
	for k, v := range now {
		if _, reason, _ := strings.Cut(k, "/"); strings.HasPrefix(reason, "drop_") {
			drops[k] = v
		}
	}
	return drops.Since(nil)
}
