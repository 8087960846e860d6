package agent

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/podpath/podpath/maps"
)

// metrics are the agent's Prometheus metrics, in a registry of its own so
// several agents (tests) can live in one process.
type metrics struct {
	reg *prometheus.Registry

	servicesProgrammed  prometheus.Gauge
	endpointsProgrammed prometheus.Gauge
	skipped             *prometheus.GaugeVec
	syncErrors          prometheus.Counter
	syncDuration        prometheus.Histogram
	programming         prometheus.Histogram
	reaped              *prometheus.CounterVec
	reapErrors          prometheus.Counter
	tcxMoved            prometheus.Counter
	tcxMoveErrors       prometheus.Counter
	peers               prometheus.Gauge
	peersSkipped        prometheus.Gauge
	peerSyncErrors      prometheus.Counter
	policyEndpoints     prometheus.Gauge
	policyIdentities    prometheus.Gauge
	policySyncErrors    prometheus.Counter

	mu          sync.Mutex
	skipReasons map[string]bool
}

// latencyBuckets span a sub-millisecond sync to a minute of backlog.
var latencyBuckets = prometheus.ExponentialBuckets(0.0005, 2, 18)

func newMetrics(pinRoot string) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		servicesProgrammed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podpath_services_programmed",
			Help: "Kubernetes Services programmed into the datapath after the last sync.",
		}),
		endpointsProgrammed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podpath_endpoints_programmed",
			Help: "Endpoints (backends, summed over Services) programmed after the last sync.",
		}),
		skipped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podpath_services_skipped",
			Help: "Services, or parts of them, not programmed after the last sync, by reason.",
		}, []string{"reason"}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podpath_sync_errors_total",
			Help: "Service syncs that failed (and were retried).",
		}),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podpath_sync_duration_seconds",
			Help:    "Time one sync of Services and EndpointSlices into the maps took.",
			Buckets: latencyBuckets,
		}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "podpath_network_programming_duration_seconds",
			Help: "From an EndpointSlice's " + AnnotationTriggerTime +
				" to its change being in the maps (as kube-proxy's network_programming_duration_seconds).",
			Buckets: latencyBuckets,
		}),
		reaped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podpath_reaped_entries_total",
			Help: "Expired entries deleted by the periodic reaper, by table.",
		}, []string{"table"}),
		tcxMoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podpath_tcx_moved_total",
			Help: "Pods whose programs ADD attached with cls_bpf (deferTCX) and the agent moved to tcx links.",
		}),
		tcxMoveErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podpath_tcx_move_errors_total",
			Help: "Rounds of moving pods' programs to tcx links that failed for some pod.",
		}),
		reapErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podpath_reap_errors_total",
			Help: "Reaper runs that failed.",
		}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podpath_peers",
			Help: "Other nodes whose pods this node's pods reach (Nodes with an InternalIP and a pod CIDR).",
		}),
		peersSkipped: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podpath_peers_skipped",
			Help: "Other Nodes that are no peer: no InternalIP or pod CIDR yet, or CIDRs overlapping another node's.",
		}),
		peerSyncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podpath_peer_sync_errors_total",
			Help: "Writes of the peers (map entries, routes) that failed (and were retried).",
		}),
		policyEndpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podpath_policy_endpoints",
			Help: "Pods of this node a NetworkPolicy selects.",
		}),
		policyIdentities: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podpath_policy_identities",
			Help: "Addresses and CIDRs with an identity (every pod of the cluster, every ipBlock CIDR and except).",
		}),
		policySyncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podpath_policy_sync_errors_total",
			Help: "Writes of the policy state that failed (and were retried).",
		}),
		skipReasons: map[string]bool{},
	}
	m.reg.MustRegister(m.servicesProgrammed, m.endpointsProgrammed, m.skipped, m.syncErrors,
		m.syncDuration, m.programming, m.reaped, m.reapErrors, m.tcxMoved, m.tcxMoveErrors, m.peers, m.peersSkipped, m.peerSyncErrors,
		m.policyEndpoints, m.policyIdentities, m.policySyncErrors,
		&datapathCollector{pinRoot: pinRoot},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// setSkipped sets the skipped gauge, zeroing reasons that no longer occur.
func (m *metrics) setSkipped(counts map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for r := range m.skipReasons {
		if counts[r] == 0 {
			m.skipped.WithLabelValues(r).Set(0)
		}
	}
	for r, n := range counts {
		m.skipReasons[r] = true
		m.skipped.WithLabelValues(r).Set(float64(n))
	}
}

// datapathCollector reads the pinned maps at scrape time: every bounded
// map's fill level and the per-reason packet counters.
type datapathCollector struct{ pinRoot string }

var (
	descMapEntries = prometheus.NewDesc("podpath_map_entries",
		"Entries in a pinned map (for per-CPU maps, keys).", []string{"map"}, nil)
	descMapMax = prometheus.NewDesc("podpath_map_max_entries",
		"Capacity of a pinned map.", []string{"map"}, nil)
	descPackets = prometheus.NewDesc("podpath_datapath_packets_total",
		"Packets the datapath decided on, by reason and hook (drops carry a drop_ reason).", []string{"reason", "hook"}, nil)
	descBytes = prometheus.NewDesc("podpath_datapath_bytes_total",
		"Bytes the datapath decided on, by reason and hook.", []string{"reason", "hook"}, nil)
	descDropEvents = prometheus.NewDesc("podpath_drop_events_total",
		"Drop events (podpath monitor), by what became of them: sent to the ring buffer, held back by the rate limit, lost to a full ring buffer.",
		[]string{"result"}, nil)
	descDropEventRate = prometheus.NewDesc("podpath_drop_event_rate",
		"Drop events each CPU may send per second (0: none are sent).", nil, nil)
	descTraceEvents = prometheus.NewDesc("podpath_trace_events_total",
		"Packets tracing selected (podpath monitor --trace), by what became of them: sent to the ring buffer, left out by the sampling, lost to a full ring buffer.",
		[]string{"result"}, nil)
	descTracing = prometheus.NewDesc("podpath_trace_sample",
		"Whether tracing is on: 0 off, else one traced packet in this many raises an event.", nil, nil)
)

// boundedMaps are the maps whose fill level matters: when one is full, new
// flows, services or pods are refused or (LRU) old entries evicted.
var boundedMaps = []string{
	maps.MapEndpoints, maps.MapServices, maps.MapBackends, maps.MapSvcSlots,
	maps.MapAffinity, maps.MapConntrack, maps.MapSNAT, maps.MapSockRevNat, maps.MapFrags, maps.MapPeers,
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descMapEntries
	ch <- descMapMax
	ch <- descPackets
	ch <- descBytes
	ch <- descDropEvents
	ch <- descDropEventRate
	ch <- descTraceEvents
	ch <- descTracing
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	for _, name := range boundedMaps {
		m, err := maps.OpenPinned(c.pinRoot, name)
		if err != nil {
			continue // not loaded (socket LB off, no SNAT): nothing to say
		}
		ch <- prometheus.MustNewConstMetric(descMapMax, prometheus.GaugeValue, float64(m.MaxEntries()), name)
		ch <- prometheus.MustNewConstMetric(descMapEntries, prometheus.GaugeValue, float64(maps.CountEntries(m)), name)
		m.Close()
	}
	if s, err := maps.ReadEventStats(c.pinRoot); err == nil {
		ch <- prometheus.MustNewConstMetric(descDropEvents, prometheus.CounterValue, float64(s.Sent), "sent")
		ch <- prometheus.MustNewConstMetric(descDropEvents, prometheus.CounterValue, float64(s.RateLimited), "rate_limited")
		ch <- prometheus.MustNewConstMetric(descDropEvents, prometheus.CounterValue, float64(s.RingbufFull), "ringbuf_full")
	}
	if cfg, err := maps.ReadEventConfig(c.pinRoot); err == nil {
		ch <- prometheus.MustNewConstMetric(descDropEventRate, prometheus.GaugeValue, float64(cfg.DropRate))
		sample := 0.0
		if t := maps.TraceOf(cfg); t.On() {
			sample = float64(max(t.Sample, 1))
		}
		ch <- prometheus.MustNewConstMetric(descTracing, prometheus.GaugeValue, sample)
	}
	if s, err := maps.ReadTraceStats(c.pinRoot); err == nil {
		ch <- prometheus.MustNewConstMetric(descTraceEvents, prometheus.CounterValue, float64(s.Sent), "sent")
		ch <- prometheus.MustNewConstMetric(descTraceEvents, prometheus.CounterValue, float64(s.SampledOut), "sampled_out")
		ch <- prometheus.MustNewConstMetric(descTraceEvents, prometheus.CounterValue, float64(s.RingbufFull), "ringbuf_full")
	}
	counters, err := maps.ReadPinnedCounters(c.pinRoot)
	if err != nil {
		return
	}
	for _, k := range counters {
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(k.Packets), k.Reason.String(), k.Hook.String())
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(k.Bytes), k.Reason.String(), k.Hook.String())
	}
}
