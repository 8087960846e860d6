package maps

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
)

// Network flags, as NETWORK_F_* in bpf/lib/maps.h.
const NetworkReachesAll = 1

// ReachAll in a network's reach list stands for every network.
const ReachAll = "*"

// NetworkVNIBase is the first network id, and the first VXLAN network
// identifier that carries one: the overlay sends a pod's packets with its
// network's id as VNI, and the node's own VNI stays below.
const NetworkVNIBase = 1 << 23

// NetworkID is the id of the network called name: derived from the name
// alone, so every node agrees on it with no one handing ids out. It fits a
// VXLAN VNI's 24 bits, from NetworkVNIBase up (never 0, which stands for
// no network).
func NetworkID(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	return NetworkVNIBase | ((v>>23)^v)&(NetworkVNIBase-1)
}

// ErrNetworkIDTaken is returned when two network names come to the same id
// on one node: one of them must be renamed.
var ErrNetworkIDTaken = errors.New("network id taken")

// Network is a network as the datapath knows it.
type Network struct {
	ID         uint32 `json:"id"`
	Name       string `json:"name"`
	ReachesAll bool   `json:"reachesAll,omitempty"`
	// Reaches are the ids the network declared a reach towards, by name
	// where the node knows the network.
	Reaches []string `json:"reaches,omitempty"`
}

// Networks gives access to the networks and network_reach maps.
type Networks struct {
	info, reach *ebpf.Map
}

// NewNetworks wraps open networks and network_reach maps.
func NewNetworks(info, reach *ebpf.Map) *Networks { return &Networks{info: info, reach: reach} }

// OpenNetworks opens a node's pinned networks maps.
func OpenNetworks(root string) (*Networks, error) {
	info, err := OpenPinned(root, MapNetworks)
	if err != nil {
		return nil, err
	}
	reach, err := OpenPinned(root, MapNetworkReach)
	if err != nil {
		info.Close()
		return nil, err
	}
	return &Networks{info: info, reach: reach}, nil
}

// Close releases the maps.
func (n *Networks) Close() error {
	return errors.Join(n.info.Close(), n.reach.Close())
}

// networkName is the name a network_info carries.
func networkName(v *NetworkInfo) string {
	b := make([]byte, 0, len(v.Name))
	for _, c := range v.Name {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// Put registers the network called name with the networks it reaches
// (names, or ReachAll), replacing what it declared before, and returns its
// id. Another network's name already holding the id is ErrNetworkIDTaken.
// Several callers putting the same network at once write the same entries.
func (n *Networks) Put(name string, reaches []string) (uint32, error) {
	id := NetworkID(name)
	var v NetworkInfo
	if len(name) >= len(v.Name) {
		return 0, fmt.Errorf("network name %q: longer than %d bytes", name, len(v.Name)-1)
	}
	var old NetworkInfo
	if err := n.info.Lookup(id, &old); err == nil {
		if other := networkName(&old); other != name {
			return 0, fmt.Errorf("%w: networks %q and %q both have id %d: rename one of them", ErrNetworkIDTaken, name, other, id)
		}
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, fmt.Errorf("look up network %d: %w", id, err)
	}
	want := map[uint32]bool{}
	for _, r := range reaches {
		if r == ReachAll {
			v.Flags |= NetworkReachesAll
			continue
		}
		if r == "" {
			return 0, fmt.Errorf("network %q: an empty name in its reaches", name)
		}
		if other := NetworkID(r); other != id {
			want[other] = true
		}
	}
	for i := range len(name) {
		v.Name[i] = int8(name[i])
	}
	if err := n.info.Put(id, &v); err != nil {
		return 0, fmt.Errorf("write network %q: %w", name, err)
	}
	for to := range want {
		if err := n.reach.Put(NetworkPair{From: id, To: to}, uint32(0)); err != nil {
			return 0, fmt.Errorf("write network %q's reach: %w", name, err)
		}
	}
	pairs, err := n.pairs()
	if err != nil {
		return 0, err
	}
	for _, p := range pairs {
		if p.From == id && !want[p.To] {
			if err := n.reach.Delete(p); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return 0, fmt.Errorf("delete network %q's reach: %w", name, err)
			}
		}
	}
	return id, nil
}

// Delete removes the network called name and the reaches it declared.
func (n *Networks) Delete(name string) error {
	id := NetworkID(name)
	var old NetworkInfo
	if err := n.info.Lookup(id, &old); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return err
	}
	if networkName(&old) != name {
		return nil
	}
	pairs, err := n.pairs()
	if err != nil {
		return err
	}
	for _, p := range pairs {
		if p.From == id {
			if err := n.reach.Delete(p); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
		}
	}
	if err := n.info.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

func (n *Networks) pairs() ([]NetworkPair, error) {
	var (
		out []NetworkPair
		k   NetworkPair
		v   uint32
	)
	it := n.reach.Iterate()
	for it.Next(&k, &v) {
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", MapNetworkReach, err)
	}
	return out, nil
}

// List returns the networks sorted by name, with their reaches.
func (n *Networks) List() ([]Network, error) {
	var (
		out []Network
		id  uint32
		v   NetworkInfo
	)
	names := map[uint32]string{}
	it := n.info.Iterate()
	for it.Next(&id, &v) {
		nw := Network{ID: id, Name: networkName(&v), ReachesAll: v.Flags&NetworkReachesAll != 0}
		names[id] = nw.Name
		out = append(out, nw)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", MapNetworks, err)
	}
	pairs, err := n.pairs()
	if err != nil {
		return nil, err
	}
	for i := range out {
		for _, p := range pairs {
			if p.From != out[i].ID {
				continue
			}
			name, ok := names[p.To]
			if !ok {
				name = fmt.Sprintf("#%d", p.To)
			}
			out[i].Reaches = append(out[i].Reaches, name)
		}
		if out[i].ReachesAll {
			out[i].Reaches = append(out[i].Reaches, ReachAll)
		}
		slices.Sort(out[i].Reaches)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// NetworkNames maps the ids of a node's networks to their names; empty
// when the node has no networks maps.
func NetworkNames(root string) map[uint32]string {
	out := map[uint32]string{}
	n, err := OpenNetworks(root)
	if err != nil {
		return out
	}
	defer n.Close()
	list, _ := n.List()
	for _, nw := range list {
		out[nw.ID] = nw.Name
	}
	return out
}

// FormatReaches renders a reach list for a table.
func FormatReaches(r []string) string {
	if len(r) == 0 {
		return "-"
	}
	return strings.Join(r, ",")
}
