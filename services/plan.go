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

	// Backends: one id per (address, port, protocol), shared by every
	// service that lists it; terminating unless some frontend gives it new
	// flows. The entry of each (service, port, backend), in loop order, for
	// the frontends below: portEntries[portBase[si]+pi][bi], nil where the
	// backend does not serve that port.
	refs := make(map[beKey]*backendEntry, len(prev.be))
	active := make(map[*backendEntry]bool, len(prev.be))
	var (
		newBackends []*backendEntry
		portEntries [][]*backendEntry
		portBase    = make([]int, len(services))
	)
	for si := range services {
		s := &services[si]
		portBase[si] = len(portEntries)
		for pi := range s.Ports {
			p := &s.Ports[pi]
			proto := protoNumber(p.Protocol)
			entries := make([]*backendEntry, len(s.Backends))
			for bi := range s.Backends {
				b := &s.Backends[bi]
				tp := b.targetPort(pi, p)
				if tp == 0 {
					continue
				}
				k := beKey{toIP16(b.IP), uint16(tp), proto}
				e := refs[k]
				if e == nil {
					e = &backendEntry{Key: k}
					if old := prev.be[k]; old != nil {
						e.ID = old.ID
					} else {
						newBackends = append(newBackends, e)
					}
					refs[k] = e
				}
				entries[bi] = e
			}
			portEntries = append(portEntries, entries)
		}
	}
	if uint32(len(refs)) > lim.maxBackends {
		return nil, fmt.Errorf("%w: %d backends, the node's backends map holds %d (node init --max-backends)", ErrCapacity, len(refs), lim.maxBackends)
	}
	// Backend ids count up and wrap: an id is not handed out again soon
	// after its backend went, so nothing a racing packet may still have
	// recorded under the old id (a conntrack or affinity entry created
	// while the backend was being removed) can point at a new backend.
	ids := newIDAllocator(1, maxBackendID, len(prev.beByID))
	ids.cur = max(prev.nextBackendID, 1)
	for id := range prev.beByID {
		ids.reserve(id)
	}
	for _, b := range newBackends {
		id, ok := ids.next()
		if !ok {
			ids.cur = 1
			if id, ok = ids.next(); !ok {
				return nil, fmt.Errorf("%w: backend ids exhausted", ErrCapacity)
			}
		}
		b.ID = id
	}
	next.nextBackendID = max(prev.nextBackendID, 1)
	if len(newBackends) > 0 {
		next.nextBackendID = ids.cur
	}
	// Frontends.
	var newFrontends []*frontend
	var slots uint64
	for si := range services {
		s := &services[si]
		var flags uint8
		var timeout uint32
		if s.SessionAffinity == AffinityClientIP {
			flags |= maps.SvcFlagAffinity
			timeout = uint32(s.AffinityTimeout)
		}
		for _, fs := range frontendsOf(s) {
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
			entries := portEntries[portBase[si]+fs.portIndex]
			var act, fallback []*backendEntry
			for bi, b := range s.Backends {
				be := entries[bi]
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
				active[be] = true
			}
			slices.Sort(f.Members)
			old := prev.fe[fs.key]
			if old != nil {
				f.ID = old.ID
				f.Slots = stableSlots(old.Slots, act)
			} else {
				newFrontends = append(newFrontends, f)
				f.Slots = stableSlots(nil, act)
			}
			slots += uint64(len(f.Slots))
			next.fe[fs.key] = f
		}
	}
	for _, e := range refs {
		e.Terminating = !active[e]
		next.addBackend(e)
	}
	if uint32(len(next.fe)) > lim.maxFrontendID {
		return nil, fmt.Errorf("%w: %d frontends, the node's services map holds %d (node init --max-services)", ErrCapacity, len(next.fe), lim.maxFrontendID)
	}
	if slots > uint64(lim.maxSlots) {
		return nil, fmt.Errorf("%w: %d backend slots, the node's svc_slots map holds %d (node init --max-backends)", ErrCapacity, slots, lim.maxSlots)
	}
	// New ids avoid every id in use before this update too: a frontend
	// removed now may still have conntrack and affinity entries until the
	// update finishes flushing them.
	fids := newIDAllocator(1, lim.maxFrontendID, len(prev.fe))
	for _, f := range prev.fe {
		fids.reserve(f.ID)
	}
	for _, f := range newFrontends {
		id, ok := fids.next()
		if !ok {
			return nil, fmt.Errorf("%w: frontend ids 1-%d exhausted (node init --max-services)", ErrCapacity, lim.maxFrontendID)
		}
		f.ID = id
	}
	return next, nil
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

// idAllocator hands out the lowest free ids of a range from cur on.
type idAllocator struct {
	used     map[uint32]bool
	cur, max uint32
}

func newIDAllocator(min, max uint32, hint int) *idAllocator {
	return &idAllocator{used: make(map[uint32]bool, hint), cur: min, max: max}
}

func (a *idAllocator) reserve(id uint32) { a.used[id] = true }

func (a *idAllocator) next() (uint32, bool) {
	for ; a.cur <= a.max && a.cur != 0; a.cur++ {
		if !a.used[a.cur] {
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
