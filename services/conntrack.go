package services

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// Conntrack reads and flushes the datapath's connection tracking table:
// one entry per direction of every translated flow.
type Conntrack struct{ m *Manager }

// Conntrack returns the conntrack helpers of the manager's node.
func (m *Manager) Conntrack() *Conntrack { return &Conntrack{m} }

// FlowFilter selects conntrack entries; zero fields match everything.
type FlowFilter struct {
	Service string         // namespace/name: flows through any of its frontends
	Backend netip.AddrPort // flows to this backend (any protocol unless Proto)
	Src     netip.Addr     // the entry's source, as on the wire
	Dst     netip.Addr     // the entry's destination, as on the wire
	Proto   Protocol
}

// Flow is one conntrack entry, readable.
type Flow struct {
	// Direction is "forward" (client to frontend, as the client sent it)
	// or "reply" (backend to client, before the frontend is restored).
	Direction  string         `json:"direction"`
	Protocol   string         `json:"protocol"`
	Src        netip.AddrPort `json:"src"`
	Dst        netip.AddrPort `json:"dst"`
	Service    string         `json:"service,omitempty"` // namespace/name
	Port       string         `json:"port,omitempty"`
	FrontendID uint32         `json:"frontendID"`
	BackendID  uint32         `json:"backendID"`
	Backend    netip.AddrPort `json:"backend,omitzero"`
	// ExpiresIn is the time left before the entry expires; negative once
	// expired (the entry is ignored by the datapath and reaped by GC).
	ExpiresIn time.Duration `json:"expiresInNs"`
	Packets   uint64        `json:"packets"`
	Bytes     uint64        `json:"bytes"`
	Flags     []string      `json:"flags,omitempty"`    // reply, hairpin
	TCPFlags  []string      `json:"tcpFlags,omitempty"` // seen in this direction
}

// Expired tells whether the datapath would ignore the entry.
func (f Flow) Expired() bool { return f.ExpiresIn < 0 }

// monotonicNow is bpf_ktime_get_ns's clock, CLOCK_MONOTONIC, in ns.
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, err
	}
	return uint64(ts.Nano()), nil
}

// selector is a filter resolved against the programmed state.
type selector struct {
	f         FlowFilter
	svcIDs    map[uint32]bool
	backendID map[uint32]bool
	proto     uint8
}

func (s *selector) match(k *maps.CtKey, e *maps.CtEntry) bool {
	if s.svcIDs != nil && !s.svcIDs[e.SvcId] {
		return false
	}
	if s.backendID != nil && !s.backendID[e.BackendId] {
		return false
	}
	if s.proto != 0 && k.Proto != s.proto {
		return false
	}
	if s.f.Src.IsValid() && maps.AddrFrom16(k.Family, k.Saddr) != s.f.Src {
		return false
	}
	if s.f.Dst.IsValid() && maps.AddrFrom16(k.Family, k.Daddr) != s.f.Dst {
		return false
	}
	return true
}

// resolve turns the filter's service and backend into ids, with the
// state's names for the listing.
func (c *Conntrack) resolve(f FlowFilter) (*selector, *state, error) {
	s := &selector{f: f}
	if f.Proto != "" {
		p, err := parseProto(string(f.Proto))
		if err != nil {
			return nil, nil, err
		}
		s.proto = p
	}
	var st *state
	err := c.m.locked(false, func() (err error) {
		st, err = c.m.load()
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	if f.Service != "" {
		ns, name, err := ParseKey(f.Service)
		if err != nil {
			return nil, nil, err
		}
		key := ns + "/" + name
		if !slices.ContainsFunc(st.Services, func(s Service) bool { return s.Key() == key }) {
			return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		s.svcIDs = map[uint32]bool{}
		for _, fe := range st.prog.fe {
			if fe.Service == key {
				s.svcIDs[fe.ID] = true
			}
		}
	}
	if f.Backend.IsValid() {
		s.backendID = map[uint32]bool{}
		for _, b := range st.prog.be {
			if b.Key.addrPort() == f.Backend && (s.proto == 0 || b.Key.Proto == s.proto) {
				s.backendID[b.ID] = true
			}
		}
		if len(s.backendID) == 0 {
			return nil, nil, fmt.Errorf("no backend %s is programmed", f.Backend)
		}
	}
	return s, st, nil
}

// List returns the entries the filter selects, expired ones included,
// sorted by service, protocol, source and direction.
func (c *Conntrack) List(f FlowFilter) ([]Flow, error) {
	sel, st, err := c.resolve(f)
	if err != nil {
		return nil, err
	}
	byID := st.prog.frontendsByID()
	now, err := monotonicNow()
	if err != nil {
		return nil, err
	}
	var out []Flow
	err = scanConntrack(c.m.dp.conntrack, func(k *maps.CtKey, e *maps.CtEntry) {
		if sel.match(k, e) {
			out = append(out, readFlow(k, e, now, byID, st.prog))
		}
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Flow) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Protocol, b.Protocol),
			a.Src.Compare(b.Src), a.Dst.Compare(b.Dst), cmp.Compare(a.Direction, b.Direction))
	})
	return out, nil
}

func readFlow(k *maps.CtKey, e *maps.CtEntry, now uint64, byID map[uint32]*frontend, p *programmed) Flow {
	fl := Flow{
		Direction:  "forward",
		Protocol:   protoName(k.Proto),
		Src:        netip.AddrPortFrom(maps.AddrFrom16(k.Family, k.Saddr), maps.HostPort(k.Sport)),
		Dst:        netip.AddrPortFrom(maps.AddrFrom16(k.Family, k.Daddr), maps.HostPort(k.Dport)),
		FrontendID: e.SvcId,
		BackendID:  e.BackendId,
		ExpiresIn:  time.Duration(int64(e.Expires - now)),
		Packets:    e.Packets,
		Bytes:      e.Bytes,
	}
	if e.Flags&maps.CtFlagReply != 0 {
		fl.Direction = "reply"
		fl.Flags = append(fl.Flags, "reply")
	}
	if e.Flags&maps.CtFlagHairpin != 0 {
		fl.Flags = append(fl.Flags, "hairpin")
	}
	if f := byID[e.SvcId]; f != nil {
		fl.Service, fl.Port = f.Service, f.Port
	}
	if b := p.beByID[e.BackendId]; b != nil {
		fl.Backend = b.Key.addrPort()
	}
	for _, tf := range []struct {
		bit  uint8
		name string
	}{{0x02, "SYN"}, {0x10, "ACK"}, {0x01, "FIN"}, {0x04, "RST"}} {
		if e.TcpFlags&tf.bit != 0 {
			fl.TCPFlags = append(fl.TCPFlags, tf.name)
		}
	}
	return fl
}

// Flush deletes the entries the filter selects: per service, every entry
// of its frontends; per backend, every entry of flows to it. An empty
// filter flushes the whole table. The clients of a flushed flow choose a
// backend again with their next packet. It returns the entries deleted.
func (c *Conntrack) Flush(f FlowFilter) (int, error) {
	sel, _, err := c.resolve(f)
	if err != nil {
		return 0, err
	}
	return deleteConntrack(c.m.dp.conntrack, sel.match)
}

// ReapExpired deletes the entries whose expiry (bpf_ktime_get_ns time,
// CLOCK_MONOTONIC) has passed, and the service flows whose backend is gone
// from the backends map (removing a backend does not scan this table: the
// datapath ignores such entries and picks again). Both only make room:
// the datapath ignores them already. An entry is looked up again just
// before its deletion, and a backend too, so one refreshed or created
// meanwhile stays. It returns the entries deleted.
func (c *Conntrack) ReapExpired() (int, error) {
	now, err := monotonicNow()
	if err != nil {
		return 0, err
	}
	ct, backends := c.m.dp.conntrack, c.m.dp.backends
	live, err := mapKeys(backends)
	if err != nil {
		return 0, fmt.Errorf("read backends: %w", err)
	}
	alive := make(map[uint32]bool, len(live))
	for _, id := range live {
		alive[id] = true
	}
	orphan := func(e *maps.CtEntry) bool {
		if e.SvcId == 0 || alive[e.BackendId] {
			return false
		}
		var b maps.Backend
		return backends.Lookup(&e.BackendId, &b) != nil
	}
	var keys []maps.CtKey
	err = scanConntrack(ct, func(k *maps.CtKey, e *maps.CtEntry) {
		if e.Expires < now || e.SvcId != 0 && !alive[e.BackendId] {
			keys = append(keys, *k)
		}
	})
	if err != nil {
		return 0, err
	}
	var e maps.CtEntry
	gone := keys[:0]
	for _, k := range keys {
		if err := ct.Lookup(&k, &e); err == nil && (e.Expires < now || orphan(&e)) {
			gone = append(gone, k)
		}
	}
	if err := batchDelete(ct, gone); err != nil {
		return 0, fmt.Errorf("reap conntrack: %w", err)
	}
	return len(gone), nil
}

// ReapAffinity deletes ClientIP affinity entries that no longer steer
// anything: their service's timeout has passed since the client's last new
// flow, or their frontend or backend is gone. It returns the entries
// deleted.
func (c *Conntrack) ReapAffinity() (int, error) {
	now, err := monotonicNow()
	if err != nil {
		return 0, err
	}
	var timeouts map[uint32]uint64
	err = c.m.locked(false, func() error {
		st, err := c.m.load()
		if err != nil {
			return err
		}
		timeouts = make(map[uint32]uint64, len(st.prog.fe))
		for _, f := range st.prog.fe {
			timeouts[f.ID] = uint64(f.AffinityTimeout) * 1e9
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	var b maps.Backend
	return deleteAffinity(c.m.dp.affinity, func(k *maps.AffinityKey, v *maps.AffinityValue) bool {
		t, ok := timeouts[k.SvcId]
		return !ok || v.LastUsed+t < now || c.m.dp.backends.Lookup(&v.BackendId, &b) != nil
	})
}
