package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	stdmaps "maps"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// Config is a manager's configuration.
type Config struct {
	PinRoot  string
	StateDir string
	// NodePortRange bounds node ports, given or allocated (default
	// DefaultNodePortRange, Kubernetes' --service-node-port-range).
	NodePortRange PortRange
}

// Option changes a Config.
type Option func(*Config)

// WithNodePortRange sets the node-port range.
func WithNodePortRange(r PortRange) Option { return func(c *Config) { c.NodePortRange = r } }

// Manager programs a node's service maps from a desired set of services.
// Every operation takes an exclusive lock on <stateDir>/services.lock, so
// concurrent CLI invocations (and goroutines) apply one after the other.
type Manager struct {
	cfg  Config
	lim  limits
	dp   *dataplane
	lock *os.File

	mu    sync.Mutex
	cache *state
	stat  os.FileInfo // services.state as it was when cache was read
	jstat os.FileInfo // services.journal likewise (nil: none)
	ids   map[string]uint32
}

// Summary says what an update changed.
type Summary struct {
	Added     []string `json:"added,omitempty"`
	Updated   []string `json:"updated,omitempty"`
	Removed   []string `json:"removed,omitempty"`
	Unchanged []string `json:"unchanged,omitempty"`
	// MapWrites counts map entries written or deleted (a Maglev table
	// counts once); 0 means the maps were already as desired.
	MapWrites int `json:"mapWrites"`
	// Flushed counts conntrack entries deleted because their frontend or
	// backend went away.
	Flushed int `json:"flushed"`
	// Resynced: the maps were rewritten whole, because they were recreated
	// (node reset and init) or an earlier update was interrupted.
	Resynced bool `json:"resynced,omitempty"`
}

// Open opens the service maps of the node pinned at pinRoot, whose
// configuration and service state live in stateDir.
func Open(pinRoot, stateDir string, opts ...Option) (_ *Manager, err error) {
	cfg := Config{PinRoot: pinRoot, StateDir: stateDir, NodePortRange: DefaultNodePortRange}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.PinRoot == "" {
		cfg.PinRoot = maps.DefaultPinRoot
	}
	if cfg.StateDir == "" {
		cfg.StateDir = loader.DefaultStateDir
	}
	if cfg.NodePortRange.Min == 0 || cfg.NodePortRange.Min > cfg.NodePortRange.Max {
		return nil, fmt.Errorf("node-port range %s is empty", cfg.NodePortRange)
	}
	node, err := loader.ReadNodeConfig(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	// Maglev tables are new maps: on kernels before 5.11 they count against
	// RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("lift the locked-memory limit for BPF maps: %w", err)
	}
	node = node.WithDefaults()

	m := &Manager{cfg: cfg, dp: &dataplane{maglevSize: node.MaglevTableSize}}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	// The maps' real sizes bound what fits, whatever node.json says.
	for _, x := range []struct {
		name string
		m    **ebpf.Map
	}{
		{maps.MapServices, &m.dp.services},
		{maps.MapSvcSlots, &m.dp.slots},
		{maps.MapBackends, &m.dp.backends},
		{maps.MapMaglev, &m.dp.maglev},
		{maps.MapAffinity, &m.dp.affinity},
		{maps.MapConntrack, &m.dp.conntrack},
	} {
		if *x.m, err = maps.OpenPinned(cfg.PinRoot, x.name); err != nil {
			return nil, err
		}
	}
	m.lim = limits{
		maxFrontendID: min(m.dp.services.MaxEntries(), m.dp.maglev.MaxEntries()) - 1,
		maxBackends:   m.dp.backends.MaxEntries(),
		maxSlots:      m.dp.slots.MaxEntries(),
	}
	if rr, err := maps.OpenPinned(cfg.PinRoot, maps.MapSvcRR); err == nil {
		m.lim.maxFrontendID = min(m.lim.maxFrontendID, rr.MaxEntries()-1)
		rr.Close()
	}

	specs, err := maps.Specs()
	if err != nil {
		return nil, err
	}
	outer := specs[maps.ProgFromPod].Maps[maps.MapMaglev]
	if outer == nil || outer.InnerMap == nil {
		return nil, fmt.Errorf("from_pod object has no %s map of maps", maps.MapMaglev)
	}
	m.dp.maglevInner = outer.InnerMap.Copy()
	m.dp.maglevInner.MaxEntries = node.MaglevTableSize
	m.dp.maglevKeys = make([]uint32, node.MaglevTableSize)
	for i := range m.dp.maglevKeys {
		m.dp.maglevKeys[i] = uint32(i)
	}

	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	if m.lock, err = os.OpenFile(filepath.Join(cfg.StateDir, lockFile), os.O_CREATE|os.O_RDWR, 0o600); err != nil {
		return nil, err
	}
	return m, nil
}

// Close releases the maps and the lock file.
func (m *Manager) Close() error {
	if m.dp != nil {
		m.dp.close()
	}
	if m.lock != nil {
		return m.lock.Close()
	}
	return nil
}

// Config returns the manager's configuration.
func (m *Manager) Config() Config { return m.cfg }

// locked runs fn holding the process's mutex and the state directory's lock.
func (m *Manager) locked(exclusive bool, fn func() error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for {
		err := unix.Flock(int(m.lock.Fd()), how)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("lock %s: %w", m.lock.Name(), err)
		}
	}
	defer unix.Flock(int(m.lock.Fd()), unix.LOCK_UN)
	return fn()
}

func (m *Manager) statePath() string { return StatePath(m.cfg.StateDir) }

// StatePath is where the services of the node with this state directory
// are recorded; it exists once a service was ever programmed.
func StatePath(stateDir string) string { return filepath.Join(stateDir, stateFile) }
func (m *Manager) dirtyPath() string   { return filepath.Join(m.cfg.StateDir, dirtyFile) }

// load returns the state, re-reading services.state and its journal only
// when another process (or Manager) changed them since they were last read
// or written here.
func (m *Manager) load() (*state, error) {
	fi, err := os.Stat(m.statePath())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ji, err := os.Stat(m.journalPath())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if m.cache != nil && sameFile(fi, m.stat) && sameFile(ji, m.jstat) {
		return m.cache, nil
	}
	st, err := readState(m.statePath())
	if err != nil {
		return nil, err
	}
	if err := replayJournal(m.journalPath(), st); err != nil {
		return nil, fmt.Errorf("read %s: %w", m.journalPath(), err)
	}
	m.cache, m.stat, m.jstat = st, fi, ji
	return st, nil
}

func sameFile(a, b os.FileInfo) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// save writes st as the next generation of services.state and drops the
// journal, whose records are in it now.
func (m *Manager) save(st *state) error {
	m.cache, m.stat, m.jstat = nil, nil, nil
	st.Gen++
	if err := writeState(m.statePath(), st); err != nil {
		return fmt.Errorf("record services: %w", err)
	}
	if err := os.Remove(m.journalPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	fi, err := os.Stat(m.statePath())
	if err != nil {
		return err
	}
	m.cache, m.stat = st, fi
	return nil
}

// mapIDs identifies the map instances: node reset and init make new ones.
// The maps this manager holds open never change, so they are read once.
func (m *Manager) mapIDs() (map[string]uint32, error) {
	if m.ids != nil {
		return m.ids, nil
	}
	ids := map[string]uint32{}
	for name, mp := range map[string]*ebpf.Map{
		maps.MapServices: m.dp.services, maps.MapSvcSlots: m.dp.slots,
		maps.MapBackends: m.dp.backends, maps.MapMaglev: m.dp.maglev,
	} {
		info, err := mp.Info()
		if err != nil {
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
		id, _ := info.ID()
		ids[name] = uint32(id)
	}
	m.ids = ids
	return ids, nil
}

// Apply makes the desired services the node's services: services not in
// desired are removed, the others added or updated. Only the map entries
// that differ are written. When desired is invalid (ValidationError) or
// does not fit (ErrCapacity), nothing changes. HostPort services belong to
// the pods whose CNI ADD made them: Apply keeps those it is not given.
func (m *Manager) Apply(ctx context.Context, desired []Service) (Summary, error) {
	return m.update(ctx, false, func(cur []Service) ([]Service, error) { return withHostPorts(desired, cur), nil })
}

// Reconcile is Apply that rewrites every entry of the service maps and
// deletes the ones nothing wants, whatever was recorded: it repairs maps
// changed behind the manager's back (an entry deleted by hand). Flows of
// frontends and backends that stay are kept.
func (m *Manager) Reconcile(ctx context.Context, desired []Service) (Summary, error) {
	return m.updateMode(ctx, false, true, func(cur []Service) ([]Service, error) { return withHostPorts(desired, cur), nil })
}

// Diff validates desired and says what Apply would change, changing nothing.
func (m *Manager) Diff(desired []Service) (Summary, error) {
	return m.update(context.Background(), true, func(cur []Service) ([]Service, error) { return withHostPorts(desired, cur), nil })
}

// withHostPorts is desired plus the current HostPort services it does not
// name.
func withHostPorts(desired, cur []Service) []Service {
	out := slices.Clone(desired)
	named := make(map[string]bool, len(desired))
	for i := range desired {
		n := desired[i].normalize()
		named[n.Key()] = true
	}
	for _, s := range cur {
		if s.Type == TypeHostPort && !named[s.Key()] {
			out = append(out, s)
		}
	}
	return out
}

// Upsert adds services or replaces those of the same namespace and name,
// leaving the others alone, in one update.
func (m *Manager) Upsert(ctx context.Context, svcs ...Service) (Summary, error) {
	add := make([]Service, len(svcs))
	for i, s := range svcs {
		add[i] = s.normalize()
	}
	return m.update(ctx, false, func(cur []Service) ([]Service, error) {
		out := slices.Clone(cur)
		idx := make(map[string]int, len(out))
		for i := range out {
			idx[out[i].Key()] = i
		}
		for _, s := range add {
			if i, ok := idx[s.Key()]; ok {
				out[i] = s
				continue
			}
			idx[s.Key()] = len(out)
			out = append(out, s)
		}
		return out, nil
	})
}

// Create adds a service; ErrExists when one of that namespace and name
// exists already.
func (m *Manager) Create(ctx context.Context, svc Service) (Summary, error) {
	svc = svc.normalize()
	return m.update(ctx, false, func(cur []Service) ([]Service, error) {
		for i := range cur {
			if cur[i].Key() == svc.Key() {
				return nil, fmt.Errorf("%w: %s", ErrExists, svc.Key())
			}
		}
		return append(slices.Clone(cur), svc), nil
	})
}

// Delete removes a service; ErrNotFound when there is none.
func (m *Manager) Delete(ctx context.Context, namespace, name string) (Summary, error) {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	return m.update(ctx, false, func(cur []Service) ([]Service, error) {
		for i := range cur {
			if cur[i].Namespace == namespace && cur[i].Name == name {
				return slices.Delete(slices.Clone(cur), i, i+1), nil
			}
		}
		return nil, fmt.Errorf("%w: %s/%s", ErrNotFound, namespace, name)
	})
}

// List returns the services, sorted by namespace and name.
func (m *Manager) List() ([]Service, error) {
	var out []Service
	err := m.locked(false, func() error {
		st, err := m.load()
		if err != nil {
			return err
		}
		out = slices.Clone(st.Services)
		return nil
	})
	return out, err
}

// Get returns one service.
func (m *Manager) Get(namespace, name string) (Service, error) {
	st, err := m.Status(namespace, name)
	return st.Service, err
}

// prepare normalizes, sorts, allocates node ports and validates.
func (m *Manager) prepare(desired []Service, st *state) ([]Service, error) {
	for i := range desired {
		desired[i] = desired[i].normalize()
	}
	sortServices(desired)
	prevPorts := map[string]int32{}
	for i := range st.Services {
		s := &st.Services[i]
		for j := range s.Ports {
			if s.Ports[j].NodePort != 0 {
				prevPorts[nodePortKey(s, &s.Ports[j])] = s.Ports[j].NodePort
			}
		}
	}
	errs := allocateNodePorts(desired, prevPorts, m.cfg.NodePortRange)
	if err := validate(desired, m.cfg.NodePortRange, errs); err != nil {
		return nil, err
	}
	return desired, nil
}

func summarize(old, next []Service) Summary {
	var s Summary
	prev := make(map[string]*Service, len(old))
	for i := range old {
		prev[old[i].Key()] = &old[i]
	}
	for i := range next {
		k := next[i].Key()
		p, ok := prev[k]
		switch {
		case !ok:
			s.Added = append(s.Added, k)
		case p.equal(&next[i]):
			s.Unchanged = append(s.Unchanged, k)
		default:
			s.Updated = append(s.Updated, k)
		}
		delete(prev, k)
	}
	for i := range old {
		if _, gone := prev[old[i].Key()]; gone {
			s.Removed = append(s.Removed, old[i].Key())
		}
	}
	return s
}

// update computes the next desired services from the current ones and
// programs the difference.
func (m *Manager) update(ctx context.Context, dryRun bool, next func([]Service) ([]Service, error)) (Summary, error) {
	return m.updateMode(ctx, dryRun, false, next)
}

// updateMode is update; with resyncAll the maps are rewritten whole (and
// entries nothing wants deleted), whatever the recorded state says.
func (m *Manager) updateMode(ctx context.Context, dryRun, resyncAll bool, next func([]Service) ([]Service, error)) (Summary, error) {
	var sum Summary
	err := m.locked(!dryRun, func() (err error) {
		sum, err = m.updateLocked(ctx, dryRun, resyncAll, next)
		return err
	})
	return sum, err
}

// updateLocked is updateMode under the lock.
func (m *Manager) updateLocked(ctx context.Context, dryRun, resyncAll bool, next func([]Service) ([]Service, error)) (Summary, error) {
	var sum Summary
	err := func() error {
		st, err := m.load()
		if err != nil {
			return err
		}
		desired, err := next(st.Services)
		if err != nil {
			return err
		}
		if desired, err = m.prepare(desired, st); err != nil {
			return err
		}
		prog, err := build(desired, st.prog, m.lim)
		if err != nil {
			return err
		}
		sum = summarize(st.Services, desired)

		ids, err := m.mapIDs()
		if err != nil {
			return err
		}
		_, dirtyErr := os.Stat(m.dirtyPath())
		resync := resyncAll || dirtyErr == nil || !stdmaps.Equal(ids, st.MapIDs)
		var o *ops
		if resync {
			o = diff(newProgrammed(), prog)
		} else {
			o = diff(st.prog, prog)
		}
		sum.MapWrites = o.entries()
		sum.Resynced = resync
		if dryRun {
			return nil
		}
		if !resync && o.empty() && len(sum.Added)+len(sum.Updated)+len(sum.Removed) == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := os.WriteFile(m.dirtyPath(), nil, 0o600); err != nil {
			return err
		}
		if resync {
			n, err := m.dp.resync(o, prog)
			sum.MapWrites += n
			if err != nil {
				return fmt.Errorf("re-synchronise service maps: %w", err)
			}
		} else if err := m.dp.apply(o, prog); err != nil {
			return fmt.Errorf("program service maps: %w", err)
		}
		flushed, err := m.dp.flushFlows(o)
		sum.Flushed += flushed
		if err != nil {
			return err
		}
		if resync {
			n, err := m.dp.resyncFlows(prog)
			sum.Flushed += n
			if err != nil {
				return err
			}
		}
		nst := &state{Version: stateVersion, MapIDs: ids, Services: desired, prog: prog, Gen: st.Gen}
		// The index that Update's incremental path reads is built here,
		// as part of the whole update, not by the first change after it
		// (25 ms at 10,000 services).
		nst.incremental()
		if err := m.save(nst); err != nil {
			return err
		}
		if err := os.Remove(m.dirtyPath()); err != nil {
			return err
		}
		slog.Debug("services applied", "added", len(sum.Added), "updated", len(sum.Updated),
			"removed", len(sum.Removed), "unchanged", len(sum.Unchanged),
			"mapWrites", sum.MapWrites, "flushed", sum.Flushed, "resynced", sum.Resynced)
		return nil
	}()
	return sum, err
}
