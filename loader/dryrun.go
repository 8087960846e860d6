package loader

import (
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
)

// DryRun is a node's programs built for the dry run (maps.DrySpecs),
// loaded against the node's pinned maps but attached nowhere: `podpath
// trace` runs packets through them with BPF_PROG_RUN. Their writes to
// shared maps are compiled out; the maps they only count or raise events
// in (maps.DryRunPrivate) are fresh copies besides. Log is the run's own
// trace_log and CT its conntrack entries (trace_ct), each shared by every
// program.
type DryRun struct {
	Programs map[string]*ebpf.Program
	Log      *ebpf.Map
	CT       *ebpf.Map
	maps     []*ebpf.Map
}

// LoadDryRun loads the dry-run programs of the node c describes.
func LoadDryRun(c Config) (_ *DryRun, err error) {
	specs, err := maps.DrySpecs()
	if err != nil {
		return nil, err
	}
	d := &DryRun{Programs: map[string]*ebpf.Program{}}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	pinned := map[string]*ebpf.Map{}
	own := map[string]*ebpf.Map{} // the run's maps, one for every program
	for _, name := range sortedKeys(specs) {
		spec := specs[name]
		if err := sizeMaps(spec, c); err != nil {
			return nil, fmt.Errorf("dry-run %s: %w", name, err)
		}
		repl := map[string]*ebpf.Map{}
		for mname, ms := range spec.Maps {
			switch {
			case mname == maps.MapTraceLog || mname == maps.MapTraceCT:
				if m := own[mname]; m != nil {
					repl[mname] = m
				}
			case ms.Pinning != ebpf.PinByName:
			case slices.Contains(maps.DryRunPrivate, mname):
				ms.Pinning = ebpf.PinNone
			default:
				m := pinned[mname]
				if m == nil {
					if m, err = ebpf.LoadPinnedMap(maps.MapPath(c.PinRoot, mname), nil); err != nil {
						return nil, fmt.Errorf("open pinned map %s: %w (is the node initialised?)", mname, err)
					}
					pinned[mname] = m
					d.maps = append(d.maps, m)
				}
				repl[mname] = m
			}
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
		if err != nil {
			return nil, fmt.Errorf("load dry-run %s: %w", name, err)
		}
		prog := coll.Programs[name]
		delete(coll.Programs, name)
		for _, mname := range []string{maps.MapTraceLog, maps.MapTraceCT} {
			if m := coll.Maps[mname]; m != nil && own[mname] == nil {
				own[mname] = m
				d.maps = append(d.maps, m)
				delete(coll.Maps, mname)
			}
		}
		coll.Close()
		if prog == nil {
			return nil, fmt.Errorf("dry-run object %s lacks its program", name)
		}
		d.Programs[name] = prog
	}
	d.Log, d.CT = own[maps.MapTraceLog], own[maps.MapTraceCT]
	if d.Log == nil || d.CT == nil {
		return nil, fmt.Errorf("the dry-run objects lack %s or %s", maps.MapTraceLog, maps.MapTraceCT)
	}
	return d, nil
}

// Close releases the programs and maps.
func (d *DryRun) Close() error {
	for _, p := range d.Programs {
		p.Close()
	}
	for _, m := range d.maps {
		m.Close()
	}
	return nil
}
