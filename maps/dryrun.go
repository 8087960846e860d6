package maps

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// MapTraceLog is the dry-run programs' own log (bpf/lib/trace.h): never
// pinned, one per run.
const MapTraceLog = "trace_log"

// MapTraceCT holds the conntrack entries a dry run's packet would have
// created, for the later hooks of the same trace; never pinned.
const MapTraceCT = "trace_ct"

// DryRunPrivate are the maps a dry run gets fresh copies of instead of the
// node's: the dry-run programs have every write to them compiled out, and
// do not read them, so a fresh copy is a second guard that no count or
// event of the node moves.
var DryRunPrivate = []string{MapCounters, MapNatStats, MapEvents, MapEventConfig, MapEventState, MapTraceState}

// Trace note kinds, as enum trace_kind in bpf/lib/trace.h.
const (
	TraceVerdict   = 1
	TraceRedirect  = 2
	TraceService   = 3
	TraceCTFlow    = 4
	TraceCTReply   = 5
	TraceLBNew     = 6
	TraceSNATFlow  = 7
	TraceSNATNew   = 8
	TraceSNATReply = 9
	TracePeer      = 10
	TraceTunnel    = 11
	TraceFrag      = 12
	TraceFIB       = 13
	TraceEndpoint  = 14
	TracePolicy    = 15
)

// Redirect kinds of a TraceRedirect note, as enum trace_redirect.
const (
	TraceRedirectPeer   = 1
	TraceRedirectEgress = 2
	TraceRedirectNeigh  = 3
)

// TraceNotes is the capacity of a TraceLog.
const TraceNotes = 32

// TraceNote is struct trace_note.
type TraceNote struct {
	Kind, A, B, C uint32
}

// TraceLog is struct trace_log: what the run is told (the tunnel a
// decapsulated packet came through) and what it noted.
type TraceLog struct {
	TunnelRemote uint32 // network order, as the kernel stores an address
	TunnelVNI    uint32
	Count        uint32
	Pad          uint32
	Notes        [TraceNotes]TraceNote
}

// DrySpecs returns the collection spec of every dry-run object (the
// programs of Specs built with PODPATH_DRY_RUN), keyed by program name.
func DrySpecs() (map[string]*ebpf.CollectionSpec, error) {
	if err := liftMemlock(); err != nil {
		return nil, err
	}
	loaders := map[string]func() (*ebpf.CollectionSpec, error){
		ProgFromPod:     loadFromPodDry,
		ProgToPod:       loadToPodDry,
		ProgFromNetdev:  loadFromNetdevDry,
		ProgToNetdev:    loadToNetdevDry,
		ProgXDPNetdev:   loadXdpNetdevDry,
		ProgFromOverlay: loadFromOverlayDry,
		ProgToOverlay:   loadToOverlayDry,
	}
	specs := make(map[string]*ebpf.CollectionSpec, len(loaders))
	for name, load := range loaders {
		spec, err := load()
		if err != nil {
			return nil, fmt.Errorf("load dry-run %s object: %w", name, err)
		}
		specs[name] = spec
	}
	return specs, nil
}

// NoTraceSpec is from_pod built without the trace events' hooks
// (PODPATH_NO_TRACE): the benchmark's reference for what tracing costs
// while it is off. Never loaded on a node.
func NoTraceSpec() (*ebpf.CollectionSpec, error) {
	if err := liftMemlock(); err != nil {
		return nil, err
	}
	spec, err := loadFromPodNoTrace()
	if err != nil {
		return nil, fmt.Errorf("load from_pod object without tracing: %w", err)
	}
	return spec, nil
}
