package agent

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/podpath/podpath/services"
)

// sliceIndex indexes EndpointSlices by their Service ("namespace/name").
const sliceIndex = "service"

// proxy follows Services and EndpointSlices and programs them through a
// services.Manager: changes are coalesced, a sync translates only the
// Services that changed and writes only the map entries that differ, at
// most once per minSync, and a full resync (every entry rewritten, drift
// repaired) runs every fullSync.
type proxy struct {
	node     string
	mgr      *services.Manager
	met      *metrics
	health   *healthChecks
	minSync  time.Duration
	fullSync time.Duration

	svcs   corelisters.ServiceLister
	slices cache.Indexer
	synced []cache.InformerSynced
	start  func(stop <-chan struct{})

	mu sync.Mutex
	// dirty: Services whose objects changed since the last sync, with the
	// earliest trigger time of their EndpointSlice changes (zero: none).
	dirty        map[string]time.Time
	pendingSince time.Time // first change not yet programmed
	kick         chan struct{}

	// Owned by the sync loop: every Service's translation, and the ones
	// the manager refused (retried at every sync).
	cache   map[string]translated
	refused map[string]skip
	tally   tally

	// Read by health checks.
	stateMu  sync.Mutex
	synced1  bool      // a sync succeeded since start
	lastSync time.Time // last successful sync
	lastErr  error
}

func newProxy(client kubernetes.Interface, node string, mgr *services.Manager, met *metrics, health *healthChecks, minSync, fullSync time.Duration) *proxy {
	p := &proxy{
		node: node, mgr: mgr, met: met, health: health,
		minSync: minSync, fullSync: fullSync,
		dirty:   map[string]time.Time{},
		kick:    make(chan struct{}, 1),
		cache:   map[string]translated{},
		refused: map[string]skip{},
		tally:   tally{skipped: map[string]int{}, checks: map[int32]healthCheck{}},
	}
	// As kube-proxy: Services another proxy serves, and the slices of
	// headless Services, are never even listed.
	noProxy := func(o *metav1.ListOptions) { o.LabelSelector = "!" + LabelServiceProxyName }
	noProxyHeadless := func(o *metav1.ListOptions) {
		o.LabelSelector = "!" + LabelServiceProxyName + ",!" + LabelHeadless
	}
	svcFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(noProxy))
	sliceFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(noProxyHeadless))

	svcInf := svcFactory.Core().V1().Services()
	sliceInf := sliceFactory.Discovery().V1().EndpointSlices()
	p.svcs = svcInf.Lister()
	p.slices = sliceInf.Informer().GetIndexer()
	if err := sliceInf.Informer().AddIndexers(cache.Indexers{sliceIndex: sliceServiceKey}); err != nil {
		panic(err) // only fails once the informer runs
	}
	svcInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.serviceChanged(o) },
		UpdateFunc: func(_, o any) { p.serviceChanged(o) },
		DeleteFunc: func(o any) { p.serviceChanged(o) },
	})
	sliceInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.sliceChanged(o) },
		UpdateFunc: func(_, o any) { p.sliceChanged(o) },
		DeleteFunc: func(o any) { p.sliceChanged(o) },
	})
	p.synced = []cache.InformerSynced{svcInf.Informer().HasSynced, sliceInf.Informer().HasSynced}
	p.start = func(stop <-chan struct{}) {
		svcFactory.Start(stop)
		sliceFactory.Start(stop)
	}
	return p
}

func sliceServiceKey(o any) ([]string, error) {
	es, ok := o.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + name}, nil
}

func (p *proxy) serviceChanged(o any) {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	s, ok := o.(*corev1.Service)
	if !ok {
		return
	}
	p.markDirty(s.Namespace+"/"+s.Name, time.Time{})
}

func (p *proxy) sliceChanged(o any) {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	es, ok := o.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	keys, _ := sliceServiceKey(es)
	if len(keys) == 0 {
		return
	}
	t, _ := triggerTime(es)
	p.markDirty(keys[0], t)
}

func (p *proxy) markDirty(key string, trigger time.Time) {
	p.mu.Lock()
	prev, had := p.dirty[key]
	if !had || !trigger.IsZero() && (prev.IsZero() || trigger.Before(prev)) {
		p.dirty[key] = trigger
	}
	if p.pendingSince.IsZero() {
		p.pendingSince = time.Now()
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run syncs until ctx ends: after the informers' first listing, whenever
// something changed (at most once per minSync), and fully every fullSync.
func (p *proxy) run(ctx context.Context) error {
	p.start(ctx.Done())
	slog.Info("waiting for the Service and EndpointSlice caches")
	if !cache.WaitForCacheSync(ctx.Done(), p.synced...) {
		return ctx.Err()
	}
	// Everything the caches hold is new to this process: the first sync
	// looks at every Service and reconciles the maps whole, which is also
	// how a restarted agent converges without flushing conntrack.
	p.markAll()
	// The first sync hands everything to Apply, which writes only what
	// differs from what the maps hold; the periodic one reconciles.
	full, first := false, true
	resync := time.NewTicker(p.fullSync)
	defer resync.Stop()
	var last time.Time
	for {
		if wait := p.minSync - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		last = time.Now()
		if err := p.sync(ctx, full, first); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			slog.Error("service sync failed; retrying", "err", err)
			// The dirty set was put back; come round again.
			select {
			case p.kick <- struct{}{}:
			default:
			}
		} else {
			full, first = false, false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-p.kick:
		case <-resync.C:
			p.markAll()
			full = true
		}
	}
}

// markAll marks every Service known, and every one programmed, dirty.
func (p *proxy) markAll() {
	list, _ := p.svcs.List(labels.Everything())
	p.mu.Lock()
	for _, s := range list {
		k := s.Namespace + "/" + s.Name
		if _, ok := p.dirty[k]; !ok {
			p.dirty[k] = time.Time{}
		}
	}
	for k := range p.cache {
		if _, ok := p.dirty[k]; !ok {
			p.dirty[k] = time.Time{}
		}
	}
	p.mu.Unlock()
}

// sync programs the changed Services. The first one after start hands
// every Service to Apply; with full, the service maps are rewritten whole
// (Manager.Reconcile), repairing any drift.
func (p *proxy) sync(ctx context.Context, full, first bool) (err error) {
	p.mu.Lock()
	dirty := p.dirty
	pendingSince := p.pendingSince
	p.dirty = map[string]time.Time{}
	p.pendingSince = time.Time{}
	p.mu.Unlock()
	if len(dirty) == 0 && !full && !first {
		return nil
	}
	start := time.Now()
	defer func() {
		p.met.syncDuration.Observe(time.Since(start).Seconds())
		p.stateMu.Lock()
		p.lastErr = err
		if err == nil {
			p.synced1, p.lastSync = true, time.Now()
		}
		p.stateMu.Unlock()
		if err != nil {
			p.met.syncErrors.Inc()
			p.mu.Lock()
			for k, t := range dirty {
				if cur, ok := p.dirty[k]; !ok || !t.IsZero() && (cur.IsZero() || t.Before(cur)) {
					p.dirty[k] = t
				}
			}
			if p.pendingSince.IsZero() || !pendingSince.IsZero() && pendingSince.Before(p.pendingSince) {
				p.pendingSince = pendingSince
			}
			p.mu.Unlock()
		}
	}()

	for key := range dirty {
		ns, name, _ := cache.SplitMetaNamespaceKey(key)
		ks, err := p.svcs.Services(ns).Get(name)
		if err != nil {
			p.set(key, func() { delete(p.cache, key) })
			continue
		}
		objs, _ := p.slices.ByIndex(sliceIndex, key)
		eps := make([]*discoveryv1.EndpointSlice, 0, len(objs))
		for _, o := range objs {
			eps = append(eps, o.(*discoveryv1.EndpointSlice))
		}
		t := translate(ks, eps, p.node)
		for _, sk := range t.skips {
			slog.Warn("service not fully programmed", "service", key, "reason", sk.reason, "detail", sk.detail)
		}
		p.set(key, func() { p.cache[key] = t })
	}

	var sum services.Summary
	if full || first {
		sum, err = p.syncAll(ctx, full)
	} else {
		sum, err = p.syncChanged(ctx, dirty)
	}
	if err != nil {
		return err
	}
	now := time.Now()
	for _, t := range dirty {
		if !t.IsZero() {
			p.met.programming.Observe(now.Sub(t).Seconds())
		}
	}
	p.report()
	slog.Debug("services synced", "full", full, "changed", len(dirty),
		"added", len(sum.Added), "updated", len(sum.Updated), "removed", len(sum.Removed),
		"mapWrites", sum.MapWrites, "flushed", sum.Flushed, "took", time.Since(start))
	return nil
}

// syncChanged programs the Services in dirty, and those refused before
// (what blocked them may be gone), through Manager.Update: the work is the
// change's, not the cluster's.
func (p *proxy) syncChanged(ctx context.Context, dirty map[string]time.Time) (services.Summary, error) {
	var (
		ups     []services.Service
		removes []string
	)
	keys := slices.Sorted(maps.Keys(dirty))
	for k := range p.refused {
		if _, ok := dirty[k]; !ok {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		p.set(k, func() { delete(p.refused, k) })
		if s := p.cache[k].svc; s != nil {
			ups = append(ups, *s)
		} else {
			removes = append(removes, k)
		}
	}
	for attempt := 0; ; attempt++ {
		sum, err := p.mgr.Update(ctx, ups, removes)
		drop := p.refuse(err, attempt)
		if drop == nil {
			return sum, err
		}
		// A refused Service must not stay programmed as it was.
		ups = slices.DeleteFunc(ups, func(s services.Service) bool {
			if drop[s.Key()] {
				removes = append(removes, s.Key())
				return true
			}
			return false
		})
	}
}

// syncAll hands every Service to the manager: to Apply, which writes what
// differs from what it recorded, or with reconcile to Reconcile, which
// rewrites every map entry and deletes the ones nothing wants, repairing
// drift.
func (p *proxy) syncAll(ctx context.Context, reconcile bool) (services.Summary, error) {
	for k := range p.refused {
		p.set(k, func() { delete(p.refused, k) })
	}
	desired := make([]services.Service, 0, len(p.cache))
	for _, k := range slices.Sorted(maps.Keys(p.cache)) {
		if s := p.cache[k].svc; s != nil {
			desired = append(desired, *s)
		}
	}
	for attempt := 0; ; attempt++ {
		apply := p.mgr.Apply
		if reconcile {
			apply = p.mgr.Reconcile
		}
		sum, err := apply(ctx, desired)
		drop := p.refuse(err, attempt)
		if drop == nil {
			return sum, err
		}
		desired = slices.DeleteFunc(desired, func(s services.Service) bool { return drop[s.Key()] })
	}
}

// refuse reads a validation error: the Services it names (ours; for a
// conflict with a hostPort, ours yields) are recorded as refused, with the
// reason, and returned to be left out. It returns nil when err is not
// such an error, or after a few attempts.
func (p *proxy) refuse(err error, attempt int) map[string]bool {
	var verr *services.ValidationError
	if err == nil || !errors.As(err, &verr) || attempt > 3 {
		return nil
	}
	drop := map[string]bool{}
	for _, fe := range verr.Errors {
		key, reason := fe.Service, SkipInvalid
		if fe.Other != "" {
			reason = SkipConflict
			if _, ours := p.cache[key]; !ours {
				key = fe.Other
			}
		}
		if _, ours := p.cache[key]; !ours {
			continue
		}
		drop[key] = true
		if _, seen := p.refused[key]; !seen {
			p.set(key, func() { p.refused[key] = skip{reason, fe.Error()} })
			slog.Warn("service not programmed", "service", key, "reason", reason, "detail", fe.Error())
		}
	}
	if len(drop) == 0 {
		return nil
	}
	return drop
}

// tally is what the gauges and health checks say, kept up to date per
// Service as its translation or refusal changes, so a sync's report costs
// nothing per Service it did not touch.
type tally struct {
	services, backends int
	skipped            map[string]int
	checks             map[int32]healthCheck
}

// set runs change, which alters the cache entry or the refusal of key,
// with key's part in the tally taken out before and put back after.
func (p *proxy) set(key string, change func()) {
	p.count(key, -1)
	change()
	p.count(key, 1)
}

func (p *proxy) count(key string, n int) {
	t, ok := p.cache[key]
	if !ok {
		return
	}
	for _, sk := range t.skips {
		p.tally.skipped[sk.reason] += n
	}
	if r, refused := p.refused[key]; refused {
		p.tally.skipped[r.reason] += n
		return
	}
	if t.svc == nil {
		return
	}
	p.tally.services += n
	p.tally.backends += n * len(t.svc.Backends)
	if t.healthCheckNodePort != 0 {
		if n > 0 {
			p.tally.checks[t.healthCheckNodePort] = healthCheck{service: key, local: t.localEndpoints}
		} else {
			delete(p.tally.checks, t.healthCheckNodePort)
		}
	}
}

// report sets the gauges and the health check servers after a sync.
func (p *proxy) report() {
	p.met.servicesProgrammed.Set(float64(p.tally.services))
	p.met.endpointsProgrammed.Set(float64(p.tally.backends))
	p.met.setSkipped(p.tally.skipped)
	if p.health != nil {
		p.health.update(p.tally.checks)
	}
}

// status says whether the proxy has programmed what it was told, for
// /healthz and /readyz.
func (p *proxy) status() (ready bool, pendingSince time.Time, lastSync time.Time, lastErr error) {
	p.mu.Lock()
	pendingSince = p.pendingSince
	p.mu.Unlock()
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	return p.synced1, pendingSince, p.lastSync, p.lastErr
}
