package services

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/podpath/podpath/maps"
)

// ErrCapacity means the desired services need more map entries than the
// node's maps hold (node init --max-services, --max-backends).
var ErrCapacity = errors.New("not enough room in the service maps")

// limits are the node's map sizes that bound what can be programmed.
type limits struct {
	maxFrontendID uint32 // ids 1..maxFrontendID (svc_rr is an array indexed by id)
	maxBackends   uint32
	maxSlots      uint32
}

// frontendSpec is one frontend a service port asks for.
type frontendSpec struct {
	key       feKey
	port      *Port
	portIndex int
	// local: only backends on this node (externalTrafficPolicy Local for
	// the external scope, internalTrafficPolicy Local for the cluster IP).
	local bool
}

// frontendsOf lists the frontends of a service, per port: the cluster IP
// (internal scope), the node port on the wildcard address, external and
// load-balancer IPs (both scopes).
func frontendsOf(s *Service) []frontendSpec {
	var out []frontendSpec
	extLocal := s.ExternalTrafficPolicy == TrafficPolicyLocal
	for i := range s.Ports {
		p := &s.Ports[i]
		proto := protoNumber(p.Protocol)
		add := func(addr netip.Addr, port int32, scope maps.SvcScope, local bool) {
			out = append(out, frontendSpec{
				key:       feKey{toIP16(addr), uint16(port), proto, scope},
				port:      p,
				portIndex: i,
				local:     local,
			})
		}
		// both adds the frontend in both scopes; externalTrafficPolicy
		// Local narrows the external one to this node's backends.
		both := func(addr netip.Addr, port int32) {
			add(addr, port, maps.ScopeInternal, false)
			add(addr, port, maps.ScopeExternal, extLocal)
		}
		if s.ClusterIP.IsValid() {
			add(s.ClusterIP, p.Port, maps.ScopeInternal, s.InternalTrafficPolicy == TrafficPolicyLocal)
		}
		if s.Type == TypeHostPort {
			both(s.hostAddr(), p.Port)
		}
		if (s.Type == TypeNodePort || s.Type == TypeLoadBalancer) && p.NodePort != 0 {
			both(netip.IPv4Unspecified(), p.NodePort)
		}
		for _, ips := range [][]netip.Addr{s.ExternalIPs, s.LoadBalancerIPs} {
			for _, a := range ips {
				both(a, p.Port)
			}
		}
	}
	return out
}

func algoOf(a Algorithm) uint8 {
	switch a {
	case AlgorithmRoundRobin:
		return uint8(maps.AlgoRoundRobin)
	case AlgorithmMaglev:
		return uint8(maps.AlgoMaglev)
	}
	return uint8(maps.AlgoRandom)
}

// build computes what the maps must hold for the (normalized, valid)
// services, keeping the ids and slot positions prev has for the frontends
// and backends that stay.
func build(services []Service, prev *programmed, lim limits) (*programmed, error) {
	next := newProgrammedSized(len(prev.fe), len(prev.be))
	// Ids in use before this update stay reserved for its length: a
	// frontend or backend removed now may still have conntrack and affinity
	// entries until the update finishes flushing them.
	feIDs := newIDAllocator(1, lim.maxFrontendID, len(prev.fe))
	for _, f := range prev.fe {
		feIDs.reserve(f.ID)
	}
	beIDs := newIDAllocator(1, maxBackendID, len(prev.beByID))
	beIDs.cur = max(prev.nextBackendID, 1)
	for id := range prev.beByID {
		beIDs.reserve(id)
	}
	p := newPlanner(prev, feIDs, beIDs)
	var slots uint64
	for si := range services {
		for _, f := range p.service(&services[si]) {
			next.fe[f.Key] = f
			slots += uint64(len(f.Slots))
		}
	}
	if uint32(len(p.be)) > lim.maxBackends {
		return nil, fmt.Errorf("%w: %d backends, the node's backends map holds %d (node init --max-backends)", ErrCapacity, len(p.be), lim.maxBackends)
	}
	if uint32(len(next.fe)) > lim.maxFrontendID {
		return nil, fmt.Errorf("%w: %d frontends, the node's services map holds %d (node init --max-services)", ErrCapacity, len(next.fe), lim.maxFrontendID)
	}
	if slots > uint64(lim.maxSlots) {
		return nil, fmt.Errorf("%w: %d backend slots, the node's svc_slots map holds %d (node init --max-backends)", ErrCapacity, slots, lim.maxSlots)
	}
	if err := p.err(lim); err != nil {
		return nil, err
	}
	for _, e := range p.be {
		e.Terminating = !p.active[e]
		next.addBackend(e)
	}
	next.nextBackendID = p.nextBackendID()
	return next, nil
}

// planner computes the frontends of services and the backend entries they
// reference, reusing prev's ids for the frontends and backends that stay
// and taking new ones from its allocators.
type planner struct {
	prev         *programmed
	feIDs, beIDs *idAllocator
	// be holds every backend referenced so far: prev's entries copied,
	// new ones with fresh ids. active: those some frontend gives new flows.
	be     map[beKey]*backendEntry
	active map[*backendEntry]bool
	newBe  bool
	// noFeID, noBeID: an allocator ran dry.
	noFeID, noBeID bool
}

func newPlanner(prev *programmed, feIDs, beIDs *idAllocator) *planner {
	return &planner{prev: prev, feIDs: feIDs, beIDs: beIDs, be: map[beKey]*backendEntry{}, active: map[*backendEntry]bool{}}
}

// err reports an allocator that ran dry.
func (p *planner) err(lim limits) error {
	switch {
	case p.noFeID:
		return fmt.Errorf("%w: frontend ids 1-%d exhausted (node init --max-services)", ErrCapacity, lim.maxFrontendID)
	case p.noBeID:
		return fmt.Errorf("%w: backend ids exhausted", ErrCapacity)
	}
	return nil
}

// nextBackendID is where the next backend id search starts.
func (p *planner) nextBackendID() uint32 {
	if !p.newBe {
		return max(p.prev.nextBackendID, 1)
	}
	return p.beIDs.cur
}

// backend returns the entry for k: the one this plan has, prev's (same
// id), or a new one. Backend ids count up and wrap: an id is not handed
// out again soon after its backend went, so nothing a racing packet may
// still have recorded under the old id (a conntrack or affinity entry
// created while the backend was being removed) can point at a new backend.
func (p *planner) backend(k beKey) *backendEntry {
	if e := p.be[k]; e != nil {
		return e
	}
	e := &backendEntry{Key: k}
	if old := p.prev.be[k]; old != nil {
		e.ID = old.ID
	} else {
		id, ok := p.beIDs.next()
		if !ok {
			p.beIDs.cur = 1
			if id, ok = p.beIDs.next(); !ok {
				p.noBeID = true
			}
		}
		e.ID, p.newBe = id, true
	}
	p.be[k] = e
	return e
}

// service plans one service's frontends.
func (p *planner) service(s *Service) []*frontend {
	var flags uint8
	var timeout uint32
	if s.SessionAffinity == AffinityClientIP {
		flags |= maps.SvcFlagAffinity
		timeout = uint32(s.AffinityTimeout)
	}
	specs := frontendsOf(s)
	// Backend entries per port, [port][backend]: nil where the backend does
	// not serve the port or no frontend of the port can reach it (every
	// one is narrowed to local backends and it is not local).
	entries := make([][]*backendEntry, len(s.Ports))
	for pi := range s.Ports {
		port := &s.Ports[pi]
		proto := protoNumber(port.Protocol)
		reachAll := false
		for _, fs := range specs {
			reachAll = reachAll || fs.portIndex == pi && !fs.local
		}
		entries[pi] = make([]*backendEntry, len(s.Backends))
		for bi := range s.Backends {
			b := &s.Backends[bi]
			tp := b.targetPort(pi, port)
			if tp == 0 || !reachAll && !b.Local {
				continue
			}
			entries[pi][bi] = p.backend(beKey{toIP16(b.IP), uint16(tp), proto})
		}
	}
	out := make([]*frontend, 0, len(specs))
	for _, fs := range specs {
		f := &frontend{
			Key:             fs.key,
			Service:         s.Key(),
			Port:            portLabel(fs.port),
			Algo:            algoOf(s.Algorithm),
			Flags:           flags,
			AffinityTimeout: timeout,
		}
		if fs.key.Addr.addr().IsUnspecified() {
			f.Flags |= maps.SvcFlagNodePort
		}
		var act, fallback []*backendEntry
		for bi, b := range s.Backends {
			be := entries[fs.portIndex][bi]
			if be == nil || fs.local && !b.Local {
				continue
			}
			f.Members = append(f.Members, be.ID)
			switch {
			case b.Active():
				act = append(act, be)
			case b.fallback():
				fallback = append(fallback, be)
			}
		}
		if len(act) == 0 {
			act = fallback
		}
		for _, be := range act {
			p.active[be] = true
		}
		slices.Sort(f.Members)
		if old := p.prev.fe[fs.key]; old != nil {
			f.ID = old.ID
			f.Slots = stableSlots(old.Slots, act)
		} else {
			id, ok := p.feIDs.next()
			if !ok {
				p.noFeID = true
			}
			f.ID = id
			f.Slots = stableSlots(nil, act)
		}
		out = append(out, f)
	}
	return out
}

// stableSlots keeps backends that stay active in the slots they had: one
// that leaves is replaced by the last slot's backend, new ones are
// appended in address order. Few slots change per update, and the result
// depends only on the previous slots and the active set.
func stableSlots(old []uint32, active []*backendEntry) []uint32 {
	if len(active) == 0 {
		return nil
	}
	// Membership by linear scan for the usual handful of backends, by map
	// for large services.
	var set map[uint32]bool
	if len(active) > 32 {
		set = make(map[uint32]bool, len(active))
		for _, b := range active {
			set[b.ID] = true
		}
	}
	isActive := func(id uint32) bool {
		if set != nil {
			return set[id]
		}
		return slices.ContainsFunc(active, func(b *backendEntry) bool { return b.ID == id })
	}
	out := make([]uint32, 0, len(active))
	out = append(out, old...)
	for i := 0; i < len(out); {
		if isActive(out[i]) {
			i++
			continue
		}
		out[i] = out[len(out)-1]
		out = out[:len(out)-1]
	}
	kept := len(out)
	var inOut map[uint32]bool
	if set != nil {
		inOut = make(map[uint32]bool, kept)
		for _, id := range out {
			inOut[id] = true
		}
	}
	var added []*backendEntry
	for _, b := range active {
		if inOut != nil && inOut[b.ID] || inOut == nil && slices.Contains(out[:kept], b.ID) {
			continue
		}
		added = append(added, b)
	}
	slices.SortFunc(added, func(a, b *backendEntry) int { return a.Key.addrPort().Compare(b.Key.addrPort()) })
	for _, b := range added {
		out = append(out, b.ID)
	}
	return out
}

func portLabel(p *Port) string {
	if p.Name != "" {
		return p.Name
	}
	return strconv.Itoa(int(p.Port))
}

// maxBackendID is the highest backend id; 0 means "no backend".
const maxBackendID = 1<<32 - 2

// idAllocator hands out the lowest free ids of a range from cur on. An id
// is free when neither used nor taken (when set) says otherwise.
type idAllocator struct {
	used     map[uint32]bool
	taken    func(uint32) bool
	cur, max uint32
}

func newIDAllocator(min, max uint32, hint int) *idAllocator {
	return &idAllocator{used: make(map[uint32]bool, hint), cur: min, max: max}
}

func (a *idAllocator) reserve(id uint32) { a.used[id] = true }

func (a *idAllocator) next() (uint32, bool) {
	for ; a.cur <= a.max && a.cur != 0; a.cur++ {
		if !a.used[a.cur] && (a.taken == nil || !a.taken(a.cur)) {
			id := a.cur
			a.used[id] = true
			a.cur++
			return id, true
		}
	}
	return 0, false
}

// sortServices orders services by namespace and name.
func sortServices(s []Service) {
	slices.SortFunc(s, func(a, b Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
}
