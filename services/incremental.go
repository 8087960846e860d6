package services

import (
	"context"
	"fmt"
	stdmaps "maps"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// Update adds or replaces the services in upserts and removes the ones
// removes names ("namespace/name"; unknown names are ignored), planning,
// validating and writing only what those services own: its cost grows
// with the change, not with the number of services, which is what a
// Kubernetes agent following EndpointSlices needs. The maps end up exactly
// as Apply of the whole resulting set would leave them. It does the whole
// update instead when it must: the maps need a resync, or a node port has
// to be allocated.
func (m *Manager) Update(ctx context.Context, upserts []Service, removes []string) (Summary, error) {
	var sum Summary
	err := m.locked(true, func() error {
		st, err := m.load()
		if err != nil {
			return err
		}
		ups := make([]Service, len(upserts))
		for i := range upserts {
			ups[i] = upserts[i].normalize()
		}
		ids, err := m.mapIDs()
		if err != nil {
			return err
		}
		_, dirtyErr := os.Stat(m.dirtyPath())
		if dirtyErr == nil || !stdmaps.Equal(ids, st.MapIDs) || slices.ContainsFunc(ups, needsNodePort) {
			sum, err = m.updateLocked(ctx, false, false, func(cur []Service) ([]Service, error) {
				return withChanges(cur, ups, removes), nil
			})
			return err
		}
		sum, err = m.updateIncremental(ctx, st, ups, removes)
		return err
	})
	return sum, err
}

// needsNodePort tells whether s has a port whose node port must be
// allocated: that needs every service's ports.
func needsNodePort(s Service) bool {
	if s.ExplicitNodePorts || s.Type != TypeNodePort && s.Type != TypeLoadBalancer {
		return false
	}
	return slices.ContainsFunc(s.Ports, func(p Port) bool { return p.NodePort == 0 })
}

// withChanges is cur with upserts put in and removes taken out.
func withChanges(cur, upserts []Service, removes []string) []Service {
	drop := make(map[string]bool, len(upserts)+len(removes))
	for _, r := range removes {
		drop[r] = true
	}
	for i := range upserts {
		drop[upserts[i].Key()] = true
	}
	out := make([]Service, 0, len(cur)+len(upserts))
	for _, s := range cur {
		if !drop[s.Key()] {
			out = append(out, s)
		}
	}
	return append(out, upserts...)
}

// claim is what two frontends may not share: address, port and protocol
// (the scope does not matter, as in validate).
type claim struct {
	addr  ip16
	port  uint16
	proto uint8
}

func claimOf(k feKey) claim { return claim{k.Addr, k.Port, k.Proto} }

// beRefs counts the frontends that list a backend as a member, and those
// that give it new flows (hold it in a slot): with none of the latter it is
// flagged terminating, with none of the former it goes.
type beRefs struct{ members, active int }

// incrIndex is what an incremental update looks up, derived from the
// state once and then kept up to date by each update.
type incrIndex struct {
	svcFe  map[string][]*frontend // service key -> its frontends
	claims map[claim]string       // -> the service holding it
	refs   map[beKey]beRefs
	feUsed map[uint32]bool
	slots  uint64
}

func (st *state) incremental() *incrIndex {
	if st.ix != nil {
		return st.ix
	}
	ix := &incrIndex{
		svcFe:  make(map[string][]*frontend, len(st.Services)),
		claims: make(map[claim]string, len(st.prog.fe)),
		refs:   make(map[beKey]beRefs, len(st.prog.be)),
		feUsed: make(map[uint32]bool, len(st.prog.fe)),
	}
	for _, f := range st.prog.fe {
		ix.add(f, st.prog)
	}
	st.ix = ix
	return ix
}

// add and remove keep the index in step with one frontend.
func (ix *incrIndex) add(f *frontend, p *programmed) { ix.count(f, p, 1) }

func (ix *incrIndex) remove(f *frontend, p *programmed) {
	ix.count(f, p, -1)
	fs := ix.svcFe[f.Service]
	if i := slices.Index(fs, f); i >= 0 {
		fs = slices.Delete(fs, i, i+1)
	}
	if len(fs) == 0 {
		delete(ix.svcFe, f.Service)
	} else {
		ix.svcFe[f.Service] = fs
	}
	if ix.claims[claimOf(f.Key)] == f.Service {
		delete(ix.claims, claimOf(f.Key))
	}
	delete(ix.feUsed, f.ID)
}

func (ix *incrIndex) count(f *frontend, p *programmed, n int) {
	for _, id := range f.Members {
		if b := p.beByID[id]; b != nil {
			r := ix.refs[b.Key]
			r.members += n
			ix.refs[b.Key] = r
		}
	}
	for _, id := range f.Slots {
		if b := p.beByID[id]; b != nil {
			r := ix.refs[b.Key]
			r.active += n
			ix.refs[b.Key] = r
		}
	}
	ix.slots = uint64(int64(ix.slots) + int64(n*len(f.Slots)))
	if n > 0 {
		ix.svcFe[f.Service] = append(ix.svcFe[f.Service], f)
		ix.claims[claimOf(f.Key)] = f.Service
		ix.feUsed[f.ID] = true
	}
}

// updateIncremental is Update's own path: st's maps are in sync and every
// upsert has its node ports.
func (m *Manager) updateIncremental(ctx context.Context, st *state, ups []Service, removes []string) (Summary, error) {
	var sum Summary
	ix := st.incremental()
	prev := st.prog

	// Validate the changed services, and their frontends against everyone.
	v := &validator{nodePort: m.cfg.NodePortRange}
	touched := make(map[string]bool, len(ups)+len(removes))
	for i := range ups {
		s := &ups[i]
		id := s.Key()
		if touched[id] {
			v.add(id, "", "given twice")
			continue
		}
		touched[id] = true
		v.service(id, s)
	}
	for _, r := range removes {
		touched[r] = true
	}
	v.frontendConflicts(ups)
	for i := range ups {
		s := &ups[i]
		for _, fs := range frontendsOf(s) {
			owner := ix.claims[claimOf(fs.key)]
			if owner != "" && !touched[owner] {
				v.errs = append(v.errs, FieldError{Service: s.Key(), Field: fmt.Sprintf("ports[%d]", fs.portIndex),
					Detail: fmt.Sprintf("frontend %s is already service %s's", netip.AddrPortFrom(fs.key.Addr.addr(), fs.key.Port), owner),
					Other:  owner})
				break
			}
		}
	}
	if err := v.err(); err != nil {
		return sum, err
	}

	// Plan the changed services; their old frontends are what they replace.
	feIDs := newIDAllocator(1, m.lim.maxFrontendID, 0)
	feIDs.taken = func(id uint32) bool { return ix.feUsed[id] }
	beIDs := newIDAllocator(1, maxBackendID, 0)
	beIDs.cur = max(prev.nextBackendID, 1)
	beIDs.taken = func(id uint32) bool { return prev.beByID[id] != nil }
	p := newPlanner(prev, feIDs, beIDs)
	newFe := map[feKey]*frontend{}
	for i := range ups {
		for _, f := range p.service(&ups[i]) {
			newFe[f.Key] = f
		}
	}
	oldFe := map[feKey]*frontend{}
	for key := range touched {
		for _, f := range ix.svcFe[key] {
			oldFe[f.Key] = f
		}
	}

	// Backends whose references change, and what they become.
	planned := make(map[uint32]*backendEntry, len(p.be))
	for _, e := range p.be {
		planned[e.ID] = e
	}
	refs := map[beKey]beRefs{}
	adjust := func(b *backendEntry, members, active int) {
		r, ok := refs[b.Key]
		if !ok {
			r = ix.refs[b.Key]
		}
		r.members += members
		r.active += active
		refs[b.Key] = r
	}
	for _, f := range oldFe {
		for _, id := range f.Members {
			adjust(prev.beByID[id], -1, 0)
		}
		for _, id := range f.Slots {
			adjust(prev.beByID[id], 0, -1)
		}
	}
	for _, f := range newFe {
		for _, id := range f.Members {
			adjust(planned[id], 1, 0)
		}
		for _, id := range f.Slots {
			adjust(planned[id], 0, 1)
		}
	}
	oldBe := map[beKey]*backendEntry{}
	next := newProgrammedSized(len(newFe), len(refs))
	next.fe = newFe
	for k, r := range refs {
		old := prev.be[k]
		if old != nil {
			oldBe[k] = old
		}
		if r.members <= 0 {
			continue
		}
		e := p.be[k]
		if e == nil {
			c := *old
			e = &c
		}
		e.Terminating = r.active == 0
		next.addBackend(e)
	}

	// Capacity, counted as the whole update would.
	nBe, nFe := len(prev.be), len(prev.fe)
	slots := int64(ix.slots)
	for k := range oldBe {
		if next.be[k] == nil {
			nBe--
		}
	}
	for k := range next.be {
		if oldBe[k] == nil {
			nBe++
		}
	}
	for k, f := range oldFe {
		slots -= int64(len(f.Slots))
		if newFe[k] == nil {
			nFe--
		}
	}
	for k, f := range newFe {
		slots += int64(len(f.Slots))
		if oldFe[k] == nil {
			nFe++
		}
	}
	switch {
	case uint32(nBe) > m.lim.maxBackends:
		return sum, fmt.Errorf("%w: %d backends, the node's backends map holds %d (node init --max-backends)", ErrCapacity, nBe, m.lim.maxBackends)
	case uint32(nFe) > m.lim.maxFrontendID:
		return sum, fmt.Errorf("%w: %d frontends, the node's services map holds %d (node init --max-services)", ErrCapacity, nFe, m.lim.maxFrontendID)
	case slots > int64(m.lim.maxSlots):
		return sum, fmt.Errorf("%w: %d backend slots, the node's svc_slots map holds %d (node init --max-backends)", ErrCapacity, slots, m.lim.maxSlots)
	}
	if err := p.err(m.lim); err != nil {
		return sum, err
	}

	// What changes, for the caller.
	for i := range ups {
		k := ups[i].Key()
		j, found := st.find(k)
		switch {
		case !found:
			sum.Added = append(sum.Added, k)
		case st.Services[j].equal(&ups[i]):
			sum.Unchanged = append(sum.Unchanged, k)
		default:
			sum.Updated = append(sum.Updated, k)
		}
	}
	for _, r := range removes {
		if _, found := st.find(r); found {
			sum.Removed = append(sum.Removed, r)
		}
	}
	old := &programmed{fe: oldFe, be: oldBe}
	o := diff(old, next)
	sum.MapWrites = o.entries()
	if o.empty() && len(sum.Added)+len(sum.Updated)+len(sum.Removed) == 0 {
		return sum, nil
	}
	if err := ctx.Err(); err != nil {
		return sum, err
	}

	if err := os.WriteFile(m.dirtyPath(), nil, 0o600); err != nil {
		return sum, err
	}
	if err := m.dp.apply(o, next); err != nil {
		return sum, fmt.Errorf("program service maps: %w", err)
	}
	flushed, err := m.dp.flushFlows(o)
	sum.Flushed = flushed
	if err != nil {
		return sum, err
	}

	// The maps are written: record it, in memory and in the journal.
	rec := journalRecord{Gen: st.Gen, Services: ups, Removed: sum.Removed}
	for k, f := range oldFe {
		ix.remove(f, prev)
		if newFe[k] == nil {
			delete(prev.fe, k)
			rec.FrontendsGone = append(rec.FrontendsGone, k)
		}
	}
	for k, b := range oldBe {
		if next.be[k] == nil {
			delete(prev.be, k)
			delete(prev.beByID, b.ID)
			delete(ix.refs, k)
			rec.BackendsGone = append(rec.BackendsGone, k)
		}
	}
	for _, b := range next.be {
		prev.addBackend(b)
		rec.Backends = append(rec.Backends, b)
	}
	for k, f := range newFe {
		prev.fe[k] = f
		ix.add(f, prev)
		rec.Frontends = append(rec.Frontends, f)
	}
	prev.nextBackendID = p.nextBackendID()
	rec.NextBackendID = prev.nextBackendID
	st.setServices(ups, sum.Removed)
	if err := m.appendJournal(st, &rec); err != nil {
		return sum, err
	}
	if err := os.Remove(m.dirtyPath()); err != nil {
		return sum, err
	}
	return sum, nil
}

// find locates a service in the sorted list.
func (st *state) find(key string) (int, bool) {
	ns, name, _ := strings.Cut(key, "/")
	return slices.BinarySearchFunc(st.Services, [2]string{ns, name}, func(s Service, k [2]string) int {
		if c := strings.Compare(s.Namespace, k[0]); c != 0 {
			return c
		}
		return strings.Compare(s.Name, k[1])
	})
}

// setServices puts upserts into the sorted list and takes removes out.
func (st *state) setServices(upserts []Service, removes []string) {
	for _, r := range removes {
		if i, ok := st.find(r); ok {
			st.Services = slices.Delete(st.Services, i, i+1)
		}
	}
	for _, s := range upserts {
		if i, ok := st.find(s.Key()); ok {
			st.Services[i] = s
		} else {
			st.Services = slices.Insert(st.Services, i, s)
		}
	}
}
