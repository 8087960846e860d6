package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// NATMapping is one direction of a masqueraded flow in the snat map.
type NATMapping struct {
	Proto     uint8
	Src, Dst  netip.AddrPort // the tuple as it is on the wire
	To        netip.AddrPort // forward: node address and port; reverse: the pod's
	Reverse   bool
	TCPFlags  uint8
	Packets   uint64
	Bytes     uint64
	ExpiresIn time.Duration // negative: expired, waiting to be reused or reaped
}

// Monotonic is the clock bpf_ktime_get_ns() reads.
func Monotonic() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// ReadPinnedNAT is ReadNAT of the snat map pinned under root.
func ReadPinnedNAT(root string) ([]NATMapping, error) {
	return withPinned(root, MapSNAT, ReadNAT)
}

// ReapExpiredPinnedNAT is ReapExpiredNAT of the snat map pinned under root.
func ReapExpiredPinnedNAT(root string) (int, error) {
	return withPinned(root, MapSNAT, ReapExpiredNAT)
}

// ReadNAT returns every mapping of the snat map, forward ones first, each
// sorted by source.
func ReadNAT(m *ebpf.Map) ([]NATMapping, error) {
	var (
		out []NATMapping
		k   CtKey
		v   NatEntry
		now = Monotonic()
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, NATMapping{
			Proto:     k.Proto,
			Src:       netip.AddrPortFrom(AddrFrom16(k.Family, k.Saddr), HostPort(k.Sport)),
			Dst:       netip.AddrPortFrom(AddrFrom16(k.Family, k.Daddr), HostPort(k.Dport)),
			To:        netip.AddrPortFrom(AddrFrom16(k.Family, v.ToAddr), HostPort(v.ToPort)),
			Reverse:   v.Flags&NatFlagReverse != 0,
			TCPFlags:  v.TcpFlags,
			Packets:   v.Packets,
			Bytes:     v.Bytes,
			ExpiresIn: time.Duration(int64(v.Expires) - int64(now)),
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate snat: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Reverse != out[j].Reverse {
			return !out[i].Reverse
		}
		return out[i].Src.Compare(out[j].Src) < 0
	})
	return out, nil
}

// ReapExpiredNAT deletes the snat map's expired mappings and returns how
// many it removed. The datapath reuses expired mappings by itself; reaping
// keeps the map from filling up with them.
func ReapExpiredNAT(m *ebpf.Map) (int, error) {
	var (
		k     CtKey
		v     NatEntry
		stale []CtKey
		now   = Monotonic()
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if v.Expires < now {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("iterate snat: %w", err)
	}
	n := 0
	for _, key := range stale {
		err := m.Delete(&key)
		if err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("reap snat entry: %w", err)
		}
	}
	return n, nil
}

// ReadNATStats sums the per-CPU allocation statistics by name.
func ReadNATStats(m *ebpf.Map) (map[string]uint64, error) {
	out := map[string]uint64{}
	for idx, name := range NatStatNames {
		var perCPU []uint64
		if err := m.Lookup(&idx, &perCPU); err != nil {
			return nil, fmt.Errorf("read nat_stats[%s]: %w", name, err)
		}
		for _, v := range perCPU {
			out[name] += v
		}
	}
	return out, nil
}
