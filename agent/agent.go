// Package agent is podpath's node daemon: it follows the Kubernetes API
// (Nodes, Services, EndpointSlices, Pods, Namespaces, NetworkPolicies),
// loads and keeps the datapath, keeps every other Node as a peer (its pod
// CIDRs reached through it), installs the CNI plugin once the datapath
// serves, programs Services as kube-proxy would and NetworkPolicies into
// the policy maps, reaps expired conntrack, affinity and SNAT entries, and
// serves health and Prometheus metrics.
//
// Killing the agent leaves the datapath serving: programs, maps and links
// are pinned. A new agent (the same build or a newer one) re-runs node init
// (programs swapped in place, maps kept), lists the API, and writes only
// what differs, so no flow is lost across a restart or an upgrade.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"

	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
)

// Config is the agent's configuration; cmd/podpath's flags fill it.
type Config struct {
	// Kubeconfig is a kubeconfig file; empty: the in-cluster config.
	Kubeconfig string
	// NodeName is this node's Node object.
	NodeName string
	// Node is the datapath's configuration (pin root, state dir, map
	// sizes, uplinks, SNAT ...). An empty PodCIDR is taken from the Node's
	// spec.podCIDRs, waiting until it is set; empty Uplinks: the device
	// that holds the Node's InternalIP.
	Node loader.Config
	// SocketLBCgroup is the cgroup v2 whose processes reach Services by
	// socket-level load balancing (the node's processes: kubelet,
	// hostNetwork pods); empty: none.
	SocketLBCgroup string
	// MetricsAddr and HealthzAddr are where /metrics and /healthz, /readyz
	// are served; empty: not served.
	MetricsAddr, HealthzAddr string
	// HealthCheckAddr is the host the health check node ports of
	// externalTrafficPolicy Local Services listen on; empty: every address.
	HealthCheckAddr string
	// CNIBinSource is the podpath-cni binary installed into CNIBinDir, and
	// CNIConfDir gets the conflist; CNIBinDir empty: no CNI install.
	CNIBinSource, CNIBinDir, CNIConfDir string
	// NodePortRange is the cluster's --service-node-port-range.
	NodePortRange services.PortRange
	// MinSyncPeriod is the least time between two syncs; SyncPeriod the
	// time between full resyncs; ReapPeriod between reaper runs.
	MinSyncPeriod, SyncPeriod, ReapPeriod time.Duration
	// HealthzTimeout: /healthz fails when a change waits longer than this.
	HealthzTimeout time.Duration
}

// Defaults for the timing settings.
const (
	DefaultMinSyncPeriod  = time.Second
	DefaultSyncPeriod     = 5 * time.Minute
	DefaultReapPeriod     = 30 * time.Second
	DefaultHealthzTimeout = 2 * time.Minute
)

// Agent runs on one node.
type Agent struct {
	cfg    Config
	client kubernetes.Interface
	met    *metrics
	proxy  *proxy

	mu    sync.Mutex
	stage string
}

// Phases the agent goes through, as /healthz and /readyz report them.
const (
	phaseNode     = "waiting for the Node"
	phaseDatapath = "loading the datapath"
	phaseRunning  = "running"
)

// New prepares an agent; Run starts it.
func New(cfg Config, client kubernetes.Interface) *Agent {
	if cfg.MinSyncPeriod <= 0 {
		cfg.MinSyncPeriod = DefaultMinSyncPeriod
	}
	if cfg.SyncPeriod <= 0 {
		cfg.SyncPeriod = DefaultSyncPeriod
	}
	if cfg.ReapPeriod <= 0 {
		cfg.ReapPeriod = DefaultReapPeriod
	}
	if cfg.HealthzTimeout <= 0 {
		cfg.HealthzTimeout = DefaultHealthzTimeout
	}
	if cfg.NodePortRange.Min == 0 {
		cfg.NodePortRange = services.DefaultNodePortRange
	}
	if cfg.Node.PinRoot == "" {
		cfg.Node.PinRoot = maps.DefaultPinRoot
	}
	if cfg.Node.StateDir == "" {
		cfg.Node.StateDir = loader.DefaultStateDir
	}
	return &Agent{cfg: cfg, client: client, met: newMetrics(cfg.Node.PinRoot), stage: phaseNode}
}

func (a *Agent) phase() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stage
}

func (a *Agent) setPhase(p string) {
	a.mu.Lock()
	a.stage = p
	a.mu.Unlock()
	slog.Info("agent", "phase", p)
}

// Run runs the agent until ctx ends. It returns nil on a clean stop; the
// datapath stays loaded and serving either way.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.cfg.HealthzAddr != "" {
		if err := serve(ctx, "healthz", a.cfg.HealthzAddr, a.healthHandler()); err != nil {
			return err
		}
	}
	if a.cfg.MetricsAddr != "" {
		if err := serve(ctx, "metrics", a.cfg.MetricsAddr, a.metricsHandler()); err != nil {
			return err
		}
	}

	node, err := a.initNode(ctx)
	if err != nil {
		return err
	}
	mgr, err := services.Open(node.PinRoot, node.StateDir, services.WithNodePortRange(a.cfg.NodePortRange))
	if err != nil {
		return fmt.Errorf("open the service maps: %w", err)
	}
	defer mgr.Close()
	if a.cfg.CNIBinDir != "" {
		if err := installCNI(a.cfg, node); err != nil {
			return err
		}
	}
	health := newHealthChecks(ctx, a.cfg.HealthCheckAddr)
	defer health.close()
	a.proxy = newProxy(a.client, a.cfg.NodeName, mgr, a.met, health, a.cfg.MinSyncPeriod, a.cfg.SyncPeriod)
	a.setPhase(phaseRunning)

	peers := newPeers(a.client, a.cfg.NodeName, node, a.met)
	netpols := newNetpol(a.client, a.cfg.NodeName, node.PinRoot, node.StateDir, a.met)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.proxy.run(ctx) })
	g.Go(func() error { return peers.run(ctx, a.cfg.SyncPeriod) })
	g.Go(func() error { return netpols.run(ctx, a.cfg.SyncPeriod) })
	g.Go(func() error { a.reap(ctx, mgr); return nil })
	g.Go(func() error { a.moveToTCX(ctx, node); return nil })
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	slog.Info("agent stopped; the datapath keeps serving")
	return err
}

// initNode finds what the node needs (pod CIDR, uplink) from the Node
// object when not configured, and loads the datapath with the same code as
// `podpath node init`: the first time, it creates the maps; after a restart
// or with a newer build, it swaps the programs in place and keeps the maps.
func (a *Agent) initNode(ctx context.Context) (loader.Config, error) {
	c := a.cfg.Node
	if !c.PodCIDR.IsValid() || len(c.Uplinks) == 0 {
		info, err := waitForNode(ctx, a.client, a.cfg.NodeName, !c.PodCIDR.IsValid())
		if err != nil {
			return c, err
		}
		if !c.PodCIDR.IsValid() {
			c.PodCIDR = info.podCIDR
			slog.Info("pod CIDR from the Node", "node", a.cfg.NodeName, "podCIDR", c.PodCIDR)
		}
		if len(c.Uplinks) == 0 {
			dev, err := deviceWithAddr(info.internalIP)
			if err != nil {
				return c, err
			}
			c.Uplinks = []string{dev}
			slog.Info("uplink from the Node's InternalIP", "node", a.cfg.NodeName, "ip", info.internalIP, "device", dev)
		}
	}
	// New pods start closed until their policy is written (agent/netpol.go).
	c.PolicyPending = true
	a.setPhase(phaseDatapath)
	if err := loader.Init(c); err != nil {
		return c, fmt.Errorf("load the datapath: %w", err)
	}
	if a.cfg.SocketLBCgroup != "" {
		err := loader.AttachSocketLB(c.PinRoot, a.cfg.SocketLBCgroup)
		switch {
		case errors.Is(err, loader.ErrNoNetnsCookie):
			slog.Warn("node processes cannot reach Services by socket load balancing on this kernel", "err", err)
		case err != nil:
			return c, fmt.Errorf("socket load balancing on %s: %w", a.cfg.SocketLBCgroup, err)
		}
	}
	return loader.ReadNodeConfig(c.StateDir)
}

// reap deletes expired conntrack, affinity and SNAT entries every
// ReapPeriod: the datapath ignores them already, and deleting them keeps
// room for new flows without waiting for LRU eviction (SNAT is not LRU:
// without reaping, its closed flows' ports would stay taken).
func (a *Agent) reap(ctx context.Context, mgr *services.Manager) {
	every(ctx, a.cfg.ReapPeriod, func() {
		ct := mgr.Conntrack()
		for _, r := range []struct {
			table string
			fn    func() (int, error)
		}{
			{maps.MapConntrack, ct.ReapExpired},
			{maps.MapAffinity, ct.ReapAffinity},
			{maps.MapSNAT, func() (int, error) { return maps.ReapExpiredPinnedNAT(a.cfg.Node.PinRoot) }},
		} {
			n, err := r.fn()
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					continue // the table is not loaded on this node
				}
				a.met.reapErrors.Inc()
				slog.Warn("reap", "table", r.table, "err", err)
				continue
			}
			a.met.reaped.WithLabelValues(r.table).Add(float64(n))
			if n > 0 {
				slog.Debug("reaped", "table", r.table, "entries", n)
			}
		}
	})
}

// tcxQuiet is how long no pod may have been added before the agent moves
// pods' programs to tcx links: each move holds the kernel's rtnl lock for
// two RCU grace periods, which an ADD running meanwhile would wait for.
const tcxQuiet = time.Second

// moveToTCX moves the programs ADD attached with cls_bpf (the conflist's
// deferTCX) to tcx links, whenever pods have not been added for tcxQuiet.
func (a *Agent) moveToTCX(ctx context.Context, node loader.Config) {
	every(ctx, tcxQuiet/2, func() {
		n, err := cni.MoveToTCX(node.PinRoot, node.StateDir, tcxQuiet)
		a.met.tcxMoved.Add(float64(n))
		if err != nil {
			a.met.tcxMoveErrors.Inc()
			slog.Warn("move pods' programs to tcx", "err", err)
		}
		if n > 0 {
			slog.Debug("pods' programs moved to tcx", "pods", n)
		}
	})
}

// every runs fn every d until ctx ends.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}
