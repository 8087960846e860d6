package services

import (
	"bytes"
	"cmp"
	"encoding/gob"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// ip16 is an address as a map key: 16 bytes (IPv4 mapped into IPv6), no
// pointers, so maps of thousands of keys cost the garbage collector nothing.
type ip16 [16]byte

func toIP16(a netip.Addr) ip16 { return a.As16() }

func (i ip16) addr() netip.Addr { return netip.AddrFrom16(i).Unmap() }

// feKey is a frontend as the services map keys it.
type feKey struct {
	Addr  ip16 // the wildcard 0.0.0.0 for node ports
	Port  uint16
	Proto uint8 // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	Scope maps.SvcScope
}

// beKey is a backend as the services share it: one id per address, port
// and protocol.
type beKey struct {
	Addr  ip16
	Port  uint16
	Proto uint8
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return string(ProtocolTCP)
	case unix.IPPROTO_UDP:
		return string(ProtocolUDP)
	}
	return strconv.Itoa(int(p))
}

func protoNumber(p Protocol) uint8 {
	if p == ProtocolUDP {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func parseProto(s string) (uint8, error) {
	switch strings.ToUpper(s) {
	case string(ProtocolTCP):
		return unix.IPPROTO_TCP, nil
	case string(ProtocolUDP):
		return unix.IPPROTO_UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: want TCP or UDP", s)
}

func scopeName(s maps.SvcScope) string {
	if s == maps.ScopeInternal {
		return "internal"
	}
	return "external"
}

// String is "10.96.0.10:80/TCP/internal".
func (k feKey) String() string {
	return fmt.Sprintf("%s/%s/%s", netip.AddrPortFrom(k.Addr.addr(), k.Port), protoName(k.Proto), scopeName(k.Scope))
}

func (k feKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (k *feKey) UnmarshalText(b []byte) error {
	parts := strings.Split(string(b), "/")
	if len(parts) != 3 {
		return fmt.Errorf("frontend %q: want ADDR:PORT/PROTO/SCOPE", b)
	}
	ap, err := netip.ParseAddrPort(parts[0])
	if err != nil {
		return fmt.Errorf("frontend %q: %w", b, err)
	}
	proto, err := parseProto(parts[1])
	if err != nil {
		return fmt.Errorf("frontend %q: %w", b, err)
	}
	var scope maps.SvcScope
	switch parts[2] {
	case "internal":
		scope = maps.ScopeInternal
	case "external":
		scope = maps.ScopeExternal
	default:
		return fmt.Errorf("frontend %q: scope %q", b, parts[2])
	}
	*k = feKey{toIP16(ap.Addr()), ap.Port(), proto, scope}
	return nil
}

func (k feKey) mapKey() maps.SvcKey {
	return maps.SvcKey{
		Addr:   maps.Addr16(k.Addr.addr()),
		Port:   maps.Port(k.Port),
		Proto:  k.Proto,
		Family: maps.FamilyIPv4,
		Scope:  uint8(k.Scope),
	}
}

func feKeyFromMap(k maps.SvcKey) feKey {
	return feKey{
		Addr:  toIP16(maps.AddrFrom16(k.Family, k.Addr)),
		Port:  maps.HostPort(k.Port),
		Proto: k.Proto,
		Scope: maps.SvcScope(k.Scope),
	}
}

// String is "10.0.0.1:8080/TCP".
func (k beKey) String() string {
	return fmt.Sprintf("%s/%s", k.addrPort(), protoName(k.Proto))
}

func (k beKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (k *beKey) UnmarshalText(b []byte) error {
	addr, proto, ok := strings.Cut(string(b), "/")
	if !ok {
		return fmt.Errorf("backend %q: want ADDR:PORT/PROTO", b)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("backend %q: %w", b, err)
	}
	p, err := parseProto(proto)
	if err != nil {
		return fmt.Errorf("backend %q: %w", b, err)
	}
	*k = beKey{toIP16(ap.Addr()), ap.Port(), p}
	return nil
}

func (k beKey) addrPort() netip.AddrPort { return netip.AddrPortFrom(k.Addr.addr(), k.Port) }

// frontend is one programmed services-map entry and its slots.
type frontend struct {
	Key     feKey  `json:"key"`
	ID      uint32 `json:"id"`
	Service string `json:"service"` // namespace/name
	Port    string `json:"port"`    // the service port's name, or its number
	Algo    uint8  `json:"algo"`
	Flags   uint8  `json:"flags"`
	// AffinityTimeout in seconds, with SvcFlagAffinity.
	AffinityTimeout uint32 `json:"affinityTimeout,omitempty"`
	// Slots are the active backends' ids, slot i+1 holding Slots[i].
	Slots []uint32 `json:"slots,omitempty"`
	// Members are every backend (active or not) whose flows through this
	// frontend are legitimate, sorted: conntrack entries of others go.
	Members []uint32 `json:"members,omitempty"`
}

func (f *frontend) info() maps.SvcInfo {
	return maps.SvcInfo{
		Id:              f.ID,
		Backends:        uint16(len(f.Slots)),
		Algo:            f.Algo,
		Flags:           f.Flags,
		AffinityTimeout: f.AffinityTimeout,
	}
}

func (f *frontend) hasMaglev() bool {
	return f.Algo == uint8(maps.AlgoMaglev) && len(f.Slots) > 0
}

// backendEntry is one programmed backends-map entry.
type backendEntry struct {
	Key beKey  `json:"key"`
	ID  uint32 `json:"id"`
	// Terminating: no frontend may send it new flows (every service lists
	// it as terminating or not ready).
	Terminating bool `json:"terminating,omitempty"`
}

func (b *backendEntry) value() maps.Backend {
	v := maps.Backend{Addr: maps.Addr16(b.Key.Addr.addr()), Port: maps.Port(b.Key.Port), Family: maps.FamilyIPv4}
	if b.Terminating {
		v.Flags = maps.BackendFlagTerminating
	}
	return v
}

// programmed is what the maps hold (or will): frontends and backends.
type programmed struct {
	fe     map[feKey]*frontend
	be     map[beKey]*backendEntry
	beByID map[uint32]*backendEntry
	// nextBackendID is where the search for a free backend id starts.
	nextBackendID uint32
}

func newProgrammed() *programmed { return newProgrammedSized(0, 0) }

func newProgrammedSized(frontends, backends int) *programmed {
	return &programmed{
		fe:     make(map[feKey]*frontend, frontends),
		be:     make(map[beKey]*backendEntry, backends),
		beByID: make(map[uint32]*backendEntry, backends),
	}
}

func (p *programmed) addBackend(b *backendEntry) {
	p.be[b.Key] = b
	p.beByID[b.ID] = b
}

// stateVersion is the layout of services.state.
const stateVersion = 1

// state is what <stateDir>/services.state holds: the desired services as
// last applied, and what was programmed for them, with the ids. It is
// stored with encoding/gob: with 10,000 services JSON took ten times as
// long to read back (hundreds of milliseconds per CLI invocation); people
// read services with `podpath service list -o json` instead.
type state struct {
	Version   int               `json:"version"`
	MapIDs    map[string]uint32 `json:"mapIDs"`
	Services  []Service         `json:"services"`
	Frontends []*frontend       `json:"frontends"`
	Backends  []*backendEntry   `json:"backends"`
	// NextBackendID is where the next backend id search starts.
	NextBackendID uint32 `json:"nextBackendID"`
	// Gen counts the states written; journal records carry the generation
	// they apply to.
	Gen uint64 `json:"gen"`

	prog *programmed
	ix   *incrIndex // built by the first incremental update
}

// index builds prog from the recorded lists, which then go: prog is the
// one truth in memory, and the lists are filled again only to be written.
func (s *state) index() {
	s.prog = newProgrammedSized(len(s.Frontends), len(s.Backends))
	for _, f := range s.Frontends {
		s.prog.fe[f.Key] = f
	}
	for _, b := range s.Backends {
		s.prog.addBackend(b)
	}
	s.prog.nextBackendID = s.NextBackendID
	s.Frontends, s.Backends = nil, nil
}

// frontendsOfService lists a service's frontends by id.
func (p *programmed) frontendsOfService(key string) []*frontend {
	var out []*frontend
	for _, f := range p.fe {
		if f.Service == key {
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(a, b *frontend) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Files in the state directory.
const (
	stateFile = "services.state"
	lockFile  = "services.lock"
	// dirtyFile exists while maps are being written: if it survives (the
	// writer died), the next update re-synchronises the maps completely.
	dirtyFile = "services.dirty"
)

func readState(path string) (*state, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		st := &state{Version: stateVersion}
		st.index()
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	st := &state{}
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(st); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("%s has layout version %d, this podpath knows %d", path, st.Version, stateVersion)
	}
	st.index()
	return st, nil
}

func writeState(path string, st *state) error {
	rec := *st
	rec.Frontends = make([]*frontend, 0, len(st.prog.fe))
	for _, f := range st.prog.fe {
		rec.Frontends = append(rec.Frontends, f)
	}
	slices.SortFunc(rec.Frontends, func(a, b *frontend) int { return cmp.Compare(a.ID, b.ID) })
	rec.Backends = make([]*backendEntry, 0, len(st.prog.be))
	for _, b := range st.prog.be {
		rec.Backends = append(rec.Backends, b)
	}
	slices.SortFunc(rec.Backends, func(a, b *backendEntry) int { return cmp.Compare(a.ID, b.ID) })
	rec.NextBackendID = st.prog.nextBackendID
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(&rec); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// The data is synced, so the rename never exposes an empty file; the
	// rename itself may be lost to a power cut, which leaves the previous
	// state, and the maps (kernel memory) are gone then anyway: the next
	// update finds new map ids and re-synchronises.
	return os.Rename(tmp, path)
}
