package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrNotLoaded means the node's datapath is not pinned at the given root.
var ErrNotLoaded = errors.New("podpath datapath not loaded")

// ErrMapFull means a map has no room for another entry.
var ErrMapFull = errors.New("map full")

// OpenPinned opens a pinned map by name.
func OpenPinned(root, name string) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(MapPath(root, name), nil)
	if errors.Is(err, unix.ENOENT) {
		if !onBPFFS(root) {
			return nil, fmt.Errorf("%w: %s is not on a BPF filesystem (inside `ip netns exec`, which remounts /sys? use `nsenter --net=...`)", ErrNotLoaded, root)
		}
		return nil, fmt.Errorf("%w: no map %s under %s (run `podpath node init`)", ErrNotLoaded, name, root)
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", MapPath(root, name), err)
	}
	return m, nil
}

// Endpoint is a pod on this node as the datapath sees it.
type Endpoint struct {
	IP   netip.Addr
	Info EndpointInfo
}

// Endpoints is the typed view of the endpoints map.
type Endpoints struct{ m *ebpf.Map }

// OpenEndpoints opens the pinned endpoints map under root.
func OpenEndpoints(root string) (*Endpoints, error) {
	m, err := OpenPinned(root, MapEndpoints)
	if err != nil {
		return nil, err
	}
	return &Endpoints{m}, nil
}

// ListEndpoints reads every endpoint of the node pinned under root.
func ListEndpoints(root string) ([]Endpoint, error) {
	eps, err := OpenEndpoints(root)
	if err != nil {
		return nil, err
	}
	defer eps.Close()
	return eps.List()
}

// NewEndpoints wraps an already open endpoints map.
func NewEndpoints(m *ebpf.Map) *Endpoints { return &Endpoints{m} }

// Close releases the map.
func (e *Endpoints) Close() error { return e.m.Close() }

// Put creates or replaces the endpoint of ip.
func (e *Endpoints) Put(ip netip.Addr, info EndpointInfo) error {
	key := NewEndpointKey(ip)
	if err := e.m.Update(&key, &info, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("register endpoint %s: %w", ip, mapFull(err, e.m))
	}
	return nil
}

// Lookup returns the endpoint of ip; ok is false when there is none.
func (e *Endpoints) Lookup(ip netip.Addr) (info EndpointInfo, ok bool, err error) {
	key := NewEndpointKey(ip)
	err = e.m.Lookup(&key, &info)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return info, false, nil
	}
	if err != nil {
		return info, false, fmt.Errorf("look up endpoint %s: %w", ip, err)
	}
	return info, true, nil
}

// Delete removes the endpoint of ip. Deleting a missing endpoint is not an
// error: DEL must be idempotent.
func (e *Endpoints) Delete(ip netip.Addr) error {
	key := NewEndpointKey(ip)
	if err := e.m.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %s: %w", ip, err)
	}
	return nil
}

// List returns every endpoint, sorted by address.
func (e *Endpoints) List() ([]Endpoint, error) {
	var (
		out  []Endpoint
		key  EndpointKey
		info EndpointInfo
	)
	it := e.m.Iterate()
	for it.Next(&key, &info) {
		out = append(out, Endpoint{IP: key.IP(), Info: info})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate endpoints: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out, nil
}

// Counter is one (reason, hook) total summed over CPUs.
type Counter struct {
	Reason  Reason
	Hook    Hook
	Packets uint64
	Bytes   uint64
}

// Entries reads every entry of a map whose keys are comparable.
func Entries[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	out := map[K]V{}
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", m, err)
	}
	return out, nil
}

// withPinned opens the map pinned as name under root for the length of fn.
func withPinned[T any](root, name string, fn func(*ebpf.Map) (T, error)) (T, error) {
	m, err := OpenPinned(root, name)
	if err != nil {
		var zero T
		return zero, err
	}
	defer m.Close()
	return fn(m)
}

// ReadPinnedCounters is ReadCounters of the counters map pinned under root.
func ReadPinnedCounters(root string) ([]Counter, error) {
	return withPinned(root, MapCounters, ReadCounters)
}

// ReadCounters sums the per-CPU counters map, sorted by hook then reason.
func ReadCounters(m *ebpf.Map) ([]Counter, error) {
	var (
		out    []Counter
		key    CounterKey
		perCPU []CounterValue
	)
	it := m.Iterate()
	for it.Next(&key, &perCPU) {
		c := Counter{Reason: Reason(key.Reason), Hook: Hook(key.Hook)}
		for _, v := range perCPU {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		out = append(out, c)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate counters: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Hook != out[j].Hook {
			return out[i].Hook < out[j].Hook
		}
		return out[i].Reason < out[j].Reason
	})
	return out, nil
}

// onBPFFS tells whether path, or the nearest directory above it that
// exists, is on a BPF filesystem.
func onBPFFS(path string) bool {
	var st unix.Statfs_t
	for dir := filepath.Clean(path); ; dir = filepath.Dir(dir) {
		if unix.Statfs(dir, &st) == nil {
			return st.Type == unix.BPF_FS_MAGIC
		}
		if dir == "/" {
			return false
		}
	}
}

// CountEntries counts a map's keys, walking the keys only, which works for
// every map type.
func CountEntries(m *ebpf.Map) int {
	n := 0
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	var prev any // nil asks for the first key
	for m.NextKey(prev, &next) == nil {
		n++
		copy(key, next)
		prev = key
		if n > int(m.MaxEntries()) { // the map changed under us; stop
			break
		}
	}
	return n
}
