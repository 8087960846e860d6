package services

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
)

// resync makes the maps hold exactly next when what they hold is unknown:
// after node reset and init (new, empty maps) or after an update that was
// interrupted. Frontends that must not exist (or exist with another id) go
// first, so no stale frontend can reach slots being rewritten; then o (every
// entry of next) is written in the usual phase order; then every slot,
// Maglev table and backend next does not have is deleted. It returns the
// entries deleted.
func (d *dataplane) resync(o *ops, next *programmed) (int, error) {
	byID := next.frontendsByID()
	var (
		sk    maps.SvcKey
		si    maps.SvcInfo
		stale []maps.SvcKey
	)
	it := d.services.Iterate()
	for it.Next(&sk, &si) {
		f := next.fe[feKeyFromMap(sk)]
		if sk.Family != maps.FamilyIPv4 || f == nil || f.ID != si.Id {
			stale = append(stale, sk)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read services: %w", err)
	}
	if err := removeKeys(d, d.services, maps.MapServices, stale); err != nil {
		return 0, fmt.Errorf("services: %w", err)
	}
	deleted := len(stale)

	if err := d.apply(o, next); err != nil {
		return deleted, err
	}

	var (
		slk      maps.SlotKey
		slv      uint32
		orphanSl []maps.SlotKey
	)
	it = d.slots.Iterate()
	for it.Next(&slk, &slv) {
		f := byID[slk.SvcId]
		if f == nil || slk.Slot == 0 || int(slk.Slot) > len(f.Slots) {
			orphanSl = append(orphanSl, slk)
		}
	}
	if err := it.Err(); err != nil {
		return deleted, fmt.Errorf("read svc_slots: %w", err)
	}
	if err := removeKeys(d, d.slots, maps.MapSvcSlots, orphanSl); err != nil {
		return deleted, fmt.Errorf("svc_slots: %w", err)
	}
	deleted += len(orphanSl)

	ids, err := mapKeys(d.maglev)
	if err != nil {
		return deleted, fmt.Errorf("read maglev: %w", err)
	}
	ids = slices.DeleteFunc(ids, func(id uint32) bool { f := byID[id]; return f != nil && f.hasMaglev() })
	if err := removeKeys(d, d.maglev, maps.MapMaglev, ids); err != nil {
		return deleted, fmt.Errorf("maglev: %w", err)
	}
	deleted += len(ids)

	if ids, err = mapKeys(d.backends); err != nil {
		return deleted, fmt.Errorf("read backends: %w", err)
	}
	ids = slices.DeleteFunc(ids, func(id uint32) bool { return next.beByID[id] != nil })
	if err := removeKeys(d, d.backends, maps.MapBackends, ids); err != nil {
		return deleted, fmt.Errorf("backends: %w", err)
	}
	deleted += len(ids)
	return deleted, nil
}

// resyncFlows deletes the conntrack entries of service flows whose
// frontend is unknown or whose backend is not one of that frontend's, and
// affinity entries pointing anywhere but an active backend. Entries with
// no frontend id are not service flows and stay.
func (d *dataplane) resyncFlows(next *programmed) (int, error) {
	byID := next.frontendsByID()
	n, err := deleteConntrack(d.conntrack, func(_ *maps.CtKey, e *maps.CtEntry) bool {
		if e.SvcId == 0 {
			return false
		}
		f := byID[e.SvcId]
		return f == nil || !slices.Contains(f.Members, e.BackendId)
	})
	if err != nil {
		return n, err
	}
	_, err = deleteAffinity(d.affinity, func(k *maps.AffinityKey, v *maps.AffinityValue) bool {
		f := byID[k.SvcId]
		return f == nil || !slices.Contains(f.Slots, v.BackendId)
	})
	return n, err
}

func (p *programmed) frontendsByID() map[uint32]*frontend {
	out := make(map[uint32]*frontend, len(p.fe))
	for _, f := range p.fe {
		out[f.ID] = f
	}
	return out
}

// mapKeys lists the keys of a map with 32-bit keys.
func mapKeys(m *ebpf.Map) ([]uint32, error) {
	var (
		out       []uint32
		key, next uint32
	)
	err := m.NextKey(nil, &next)
	for err == nil {
		out = append(out, next)
		key = next
		err = m.NextKey(&key, &next)
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return out, nil
	}
	return out, err
}
