package services

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
)

// pair is a (frontend id, backend id) whose flows or affinity must go.
type pair struct{ svc, backend uint32 }

// ops are the map changes of one update, grouped by the phase they run in.
// The phases keep every frontend the datapath can see consistent:
//
//  1. backends that are new or take flows again are written;
//  2. Maglev tables that changed are built and swapped in whole;
//  3. slots 1..n of every changed frontend are written (a lookup sees the
//     old count, and each of those slots holds a backend that exists);
//  4. frontends are written with their new count, or deleted;
//  5. slots beyond the new count and Maglev tables no longer used are
//     deleted; backends that now only keep old flows are marked terminating;
//  6. backends no frontend references any more are deleted;
//  7. conntrack and affinity entries of removed frontends, and of backends
//     removed from a frontend that live on for another, are flushed, so
//     their clients choose again (a deleted backend's entries need not be:
//     the datapath finds no backend behind them and chooses again).
type ops struct {
	beWrite   []*backendEntry
	maglev    []*frontend
	slotWrite []maps.SlotKey
	slotVal   []uint32
	feWrite   []*frontend
	feDelete  []feKey
	slotDel   []maps.SlotKey
	maglevDel []uint32
	beFlag    []*backendEntry
	beDelete  []uint32

	flushSvc      map[uint32]bool
	flushPairs    map[pair]bool
	affinityPairs map[pair]bool
	// affinitySvc: frontends whose affinity was switched off; none of
	// their affinity entries may survive to be used when it is back on.
	affinitySvc map[uint32]bool
}

func (o *ops) empty() bool {
	return len(o.beWrite)+len(o.maglev)+len(o.slotWrite)+len(o.feWrite)+len(o.feDelete)+
		len(o.slotDel)+len(o.maglevDel)+len(o.beFlag)+len(o.beDelete)+
		len(o.flushSvc)+len(o.flushPairs)+len(o.affinityPairs)+len(o.affinitySvc) == 0
}

// entries counts the map entries the ops write or delete (a Maglev table
// counts as one: its outer entry).
func (o *ops) entries() int {
	return len(o.beWrite) + len(o.maglev) + len(o.slotWrite) + len(o.feWrite) + len(o.feDelete) +
		len(o.slotDel) + len(o.maglevDel) + len(o.beFlag) + len(o.beDelete)
}

// diff computes the changes from what the maps hold (old) to next.
func diff(old, next *programmed) *ops {
	o := &ops{flushSvc: map[uint32]bool{}, flushPairs: map[pair]bool{}, affinityPairs: map[pair]bool{}, affinitySvc: map[uint32]bool{}}
	for k, b := range next.be {
		prev := old.be[k]
		switch {
		case prev == nil, prev.Terminating && !b.Terminating:
			o.beWrite = append(o.beWrite, b)
		case !prev.Terminating && b.Terminating:
			o.beFlag = append(o.beFlag, b)
		}
	}
	for k, b := range old.be {
		if next.be[k] == nil {
			o.beDelete = append(o.beDelete, b.ID)
		}
	}
	for k, f := range next.fe {
		prev := old.fe[k]
		var prevSlots []uint32
		if prev != nil {
			prevSlots = prev.Slots
		}
		for i, id := range f.Slots {
			if i >= len(prevSlots) || prevSlots[i] != id {
				o.slotWrite = append(o.slotWrite, maps.SlotKey{SvcId: f.ID, Slot: uint32(i + 1)})
				o.slotVal = append(o.slotVal, id)
			}
		}
		for i := len(f.Slots); i < len(prevSlots); i++ {
			o.slotDel = append(o.slotDel, maps.SlotKey{SvcId: f.ID, Slot: uint32(i + 1)})
		}
		if prev == nil || prev.info() != f.info() {
			o.feWrite = append(o.feWrite, f)
		}
		oldTable := prev != nil && prev.hasMaglev()
		switch {
		case f.hasMaglev() && (!oldTable || !sameSet(prev.Slots, f.Slots)):
			o.maglev = append(o.maglev, f)
		case oldTable && !f.hasMaglev():
			o.maglevDel = append(o.maglevDel, f.ID)
		}
		if prev == nil {
			continue
		}
		// Flows of a backend that left the frontend but lives on (another
		// frontend has it) would keep going to it: they go. A deleted
		// backend needs nothing: a flow or affinity entry whose backend is
		// gone is ignored by the datapath, which picks again, so the usual
		// endpoint removal of a rollout scans no table.
		for _, id := range minus(prev.Members, f.Members) {
			if next.beByID[id] != nil {
				o.flushPairs[pair{f.ID, id}] = true
			}
		}
		switch {
		case f.Flags&maps.SvcFlagAffinity != 0:
			for _, id := range prev.Slots {
				if !slices.Contains(f.Slots, id) {
					o.affinityPairs[pair{f.ID, id}] = true
				}
			}
		case prev.Flags&maps.SvcFlagAffinity != 0:
			o.affinitySvc[f.ID] = true
		}
	}
	for k, f := range old.fe {
		if next.fe[k] != nil {
			continue
		}
		o.feDelete = append(o.feDelete, k)
		for i := range f.Slots {
			o.slotDel = append(o.slotDel, maps.SlotKey{SvcId: f.ID, Slot: uint32(i + 1)})
		}
		if f.hasMaglev() {
			o.maglevDel = append(o.maglevDel, f.ID)
		}
		o.flushSvc[f.ID] = true
	}
	return o
}

// sameSet tells whether two id lists hold the same ids.
func sameSet(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	as, bs := slices.Clone(a), slices.Clone(b)
	slices.Sort(as)
	slices.Sort(bs)
	return slices.Equal(as, bs)
}

// minus returns the ids of sorted a that are not in sorted b.
func minus(a, b []uint32) []uint32 {
	var out []uint32
	j := 0
	for _, x := range a {
		for j < len(b) && b[j] < x {
			j++
		}
		if j >= len(b) || b[j] != x {
			out = append(out, x)
		}
	}
	return out
}

// dataplane is the pinned service maps.
type dataplane struct {
	services, slots, backends, maglev, affinity, conntrack *ebpf.Map
	maglevInner                                            *ebpf.MapSpec
	maglevSize                                             uint32
	maglevKeys                                             []uint32

	// onWrite, when set, is told of every map write or delete (tests).
	onWrite func(mapName string, entries int)
}

func (d *dataplane) close() {
	for _, m := range []*ebpf.Map{d.services, d.slots, d.backends, d.maglev, d.affinity, d.conntrack} {
		if m != nil {
			m.Close()
		}
	}
}

func (d *dataplane) wrote(name string, n int) {
	if d.onWrite != nil && n > 0 {
		d.onWrite(name, n)
	}
}

// update writes keys[i] = values[i] in one batch.
func update[K, V any](d *dataplane, m *ebpf.Map, name string, keys []K, values []V) error {
	n := len(keys)
	if n == 0 {
		return nil
	}
	d.wrote(name, n)
	_, err := m.BatchUpdate(keys, values, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		// Map types without batch operations on this kernel (a
		// hash of maps before 5.14, say): one entry at a time.
		err = nil
		for i := 0; i < n && err == nil; i++ {
			err = m.Put(&keys[i], &values[i])
		}
	}
	if err != nil {
		return fmt.Errorf("write %d %s entries: %w", n, name, err)
	}
	return nil
}

// removeKeys deletes keys in batches, skipping keys that are already gone.
func removeKeys[K any](d *dataplane, m *ebpf.Map, name string, keys []K) error {
	if len(keys) == 0 {
		return nil
	}
	d.wrote(name, len(keys))
	return batchDelete(m, keys)
}

// batchDelete deletes keys in batches. The kernel stops a batch at the
// first missing key; that key is skipped and the rest retried.
func batchDelete[K any](m *ebpf.Map, keys []K) error {
	for i := 0; i < len(keys); {
		done, err := m.BatchDelete(keys[i:], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			// done is not to be trusted here: on a kernel without
			// batch deletes for this map type it reads as the whole
			// batch, though nothing was deleted.
			return deleteEach(m, keys[i:])
		}
		i += done
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete: %w", err)
		}
		i++ // the missing key
	}
	return nil
}

// deleteEach deletes keys one by one, for maps without batch operations;
// keys already gone are skipped.
func deleteEach[K any](m *ebpf.Map, keys []K) error {
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete: %w", err)
		}
	}
	return nil
}

// apply runs the ops in phase order.
func (d *dataplane) apply(o *ops, next *programmed) error {
	// 1. Backends that take new flows exist before any slot points at them.
	if err := d.writeBackends(o.beWrite); err != nil {
		return err
	}
	// 2. Maglev tables.
	for _, f := range o.maglev {
		if err := d.writeMaglev(f, next); err != nil {
			return err
		}
	}
	// 3. Slots.
	if err := update(d, d.slots, maps.MapSvcSlots, o.slotWrite, o.slotVal); err != nil {
		return err
	}
	// 4. Frontends: the new count becomes visible, or the frontend goes.
	fk := make([]maps.SvcKey, len(o.feWrite))
	fv := make([]maps.SvcInfo, len(o.feWrite))
	for i, f := range o.feWrite {
		fk[i], fv[i] = f.Key.mapKey(), f.info()
	}
	if err := update(d, d.services, maps.MapServices, fk, fv); err != nil {
		return err
	}
	dk := make([]maps.SvcKey, len(o.feDelete))
	for i, k := range o.feDelete {
		dk[i] = k.mapKey()
	}
	if err := removeKeys(d, d.services, maps.MapServices, dk); err != nil {
		return fmt.Errorf("services: %w", err)
	}
	// 5. What no frontend can reach any more.
	if err := removeKeys(d, d.slots, maps.MapSvcSlots, o.slotDel); err != nil {
		return fmt.Errorf("svc_slots: %w", err)
	}
	if err := removeKeys(d, d.maglev, maps.MapMaglev, o.maglevDel); err != nil {
		return fmt.Errorf("maglev: %w", err)
	}
	if err := d.writeBackends(o.beFlag); err != nil {
		return err
	}
	// 6. Backends nothing points at.
	if err := removeKeys(d, d.backends, maps.MapBackends, o.beDelete); err != nil {
		return fmt.Errorf("backends: %w", err)
	}
	return nil
}

func (d *dataplane) writeBackends(bs []*backendEntry) error {
	keys := make([]uint32, len(bs))
	vals := make([]maps.Backend, len(bs))
	for i, b := range bs {
		keys[i], vals[i] = b.ID, b.value()
	}
	return update(d, d.backends, maps.MapBackends, keys, vals)
}

// writeMaglev builds f's table into a new inner map and swaps it in with
// one update of the outer map: a lookup sees the old table or the new one.
func (d *dataplane) writeMaglev(f *frontend, next *programmed) error {
	bs := make([]maglevBackend, len(f.Slots))
	for i, id := range f.Slots {
		bs[i] = maglevBackend{ID: id, Addr: next.beByID[id].Key.addrPort()}
	}
	table := maglevTable(bs, d.maglevSize)
	inner, err := ebpf.NewMap(d.maglevInner)
	if err != nil {
		return fmt.Errorf("create Maglev table for frontend %d: %w", f.ID, err)
	}
	defer inner.Close()
	if _, err := inner.BatchUpdate(d.maglevKeys, table, nil); err != nil {
		return fmt.Errorf("fill Maglev table for frontend %d: %w", f.ID, err)
	}
	d.wrote(maps.MapMaglev, 1)
	if err := d.maglev.Update(f.ID, inner, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("swap in Maglev table for frontend %d: %w", f.ID, err)
	}
	return nil
}

// flushFlows deletes the conntrack entries of removed frontends and of
// backends removed from a frontend, and the affinity entries that would
// send a client back to them. It returns the conntrack entries deleted.
func (d *dataplane) flushFlows(o *ops) (int, error) {
	n := 0
	if len(o.flushSvc) > 0 || len(o.flushPairs) > 0 {
		var err error
		n, err = deleteConntrack(d.conntrack, func(_ *maps.CtKey, e *maps.CtEntry) bool {
			return o.flushSvc[e.SvcId] || o.flushPairs[pair{e.SvcId, e.BackendId}]
		})
		if err != nil {
			return n, err
		}
	}
	if len(o.flushSvc) > 0 || len(o.affinityPairs) > 0 || len(o.flushPairs) > 0 || len(o.affinitySvc) > 0 {
		_, err := deleteAffinity(d.affinity, func(k *maps.AffinityKey, v *maps.AffinityValue) bool {
			p := pair{k.SvcId, v.BackendId}
			return o.flushSvc[k.SvcId] || o.affinitySvc[k.SvcId] || o.affinityPairs[p] || o.flushPairs[p]
		})
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// deleteConntrack deletes every conntrack entry match selects.
func deleteConntrack(m *ebpf.Map, match func(*maps.CtKey, *maps.CtEntry) bool) (int, error) {
	var keys []maps.CtKey
	err := scanConntrack(m, func(k *maps.CtKey, e *maps.CtEntry) {
		if match(k, e) {
			keys = append(keys, *k)
		}
	})
	if err != nil {
		return 0, err
	}
	if err := batchDelete(m, keys); err != nil {
		return 0, fmt.Errorf("flush conntrack: %w", err)
	}
	return len(keys), nil
}

// scanBatch is how many entries one batch lookup reads.
const scanBatch = 4096

// scanConntrack calls fn for every conntrack entry.
func scanConntrack(m *ebpf.Map, fn func(*maps.CtKey, *maps.CtEntry)) error {
	if err := scanMap(m, fn); err != nil {
		return fmt.Errorf("read conntrack: %w", err)
	}
	return nil
}

// scanMap calls fn for every entry of a hash map, reading them in batches:
// one system call per scanBatch entries instead of two per entry, so a full
// conntrack table of 262,144 entries takes tens of milliseconds instead of
// most of a second. Entries the datapath adds or removes meanwhile may or
// may not be seen. Kernels without batch lookups are iterated.
func scanMap[K, V any](m *ebpf.Map, fn func(*K, *V)) error {
	keys := make([]K, scanBatch)
	vals := make([]V, scanBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			fn(&keys[i], &vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return err
		}
	}
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(&k, &v)
	}
	return it.Err()
}

// deleteAffinity deletes every affinity entry match selects.
func deleteAffinity(m *ebpf.Map, match func(*maps.AffinityKey, *maps.AffinityValue) bool) (int, error) {
	var keys []maps.AffinityKey
	err := scanMap(m, func(k *maps.AffinityKey, v *maps.AffinityValue) {
		if match(k, v) {
			keys = append(keys, *k)
		}
	})
	if err != nil {
		return 0, fmt.Errorf("read affinity: %w", err)
	}
	if err := batchDelete(m, keys); err != nil {
		return 0, fmt.Errorf("flush affinity: %w", err)
	}
	return len(keys), nil
}
