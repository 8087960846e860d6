package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/policy"
)

// policySyncDelay coalesces a burst of Pod, Namespace and NetworkPolicy
// changes into one computation.
const policySyncDelay = 50 * time.Millisecond

// netpol keeps the datapath's policy state (package policy) in step with
// the cluster's Pods, Namespaces and NetworkPolicies.
type netpol struct {
	self     string
	pinRoot  string
	stateDir string
	met      *metrics
	pods     func() ([]*corev1.Pod, error)
	nss      func() ([]*corev1.Namespace, error)
	pols     func() ([]*networkingv1.NetworkPolicy, error)
	synced   []cache.InformerSynced
	start    func(stop <-chan struct{})
	changed  chan struct{}
	alloc    *policy.Allocator
	// names is what the names file holds, to write it only on a change.
	names string
}

func newNetpol(client kubernetes.Interface, self, pinRoot, stateDir string, met *metrics) *netpol {
	f := informers.NewSharedInformerFactory(client, 0)
	pods, nss, pols := f.Core().V1().Pods(), f.Core().V1().Namespaces(), f.Networking().V1().NetworkPolicies()
	n := &netpol{self: self, pinRoot: pinRoot, stateDir: stateDir, met: met, changed: make(chan struct{}, 1), alloc: policy.NewAllocator(),
		pods: func() ([]*corev1.Pod, error) { return pods.Lister().List(labels.Everything()) },
		nss:  func() ([]*corev1.Namespace, error) { return nss.Lister().List(labels.Everything()) },
		pols: func() ([]*networkingv1.NetworkPolicy, error) { return pols.Lister().List(labels.Everything()) },
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { n.kick() },
		UpdateFunc: func(old, cur any) { n.kick() },
		DeleteFunc: func(any) { n.kick() },
	}
	for _, inf := range []cache.SharedIndexInformer{pods.Informer(), nss.Informer(), pols.Informer()} {
		inf.AddEventHandler(h)
		n.synced = append(n.synced, inf.HasSynced)
	}
	n.start = f.Start
	return n
}

func (n *netpol) kick() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// run computes and writes the policy state once every informer has
// listed (never from a partial view: an empty list would open every pod),
// then after every change and every resync.
func (n *netpol) run(ctx context.Context, resync time.Duration) error {
	n.start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), n.synced...) {
		return ctx.Err()
	}
	pol, err := maps.OpenPolicy(n.pinRoot)
	if err != nil {
		return err
	}
	defer pol.Close()
	n.restore(pol)
	w := policy.NewWriter(pol)
	go n.watchPending(ctx, pol)
	t := time.NewTicker(resync)
	defer t.Stop()
	for {
		if err := n.sync(w); err != nil {
			n.met.policySyncErrors.Inc()
			slog.Warn("policy", "err", err)
			time.AfterFunc(time.Second, n.kick)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			// The periodic resync reads the maps back, repairing what
			// anything else changed.
			w.Reread()
		case <-n.changed:
			time.Sleep(policySyncDelay)
		}
	}
}

// unknownPodGrace is how long a new pod the CNI plugin recorded stays
// closed waiting for its Pod object before it is taken as a pod without
// labels.
const unknownPodGrace = time.Second

// pendingPoll is how often the agent looks for new pods the CNI plugin
// started closed: their ADD waits for the agent.
const pendingPoll = 20 * time.Millisecond

// pendingWindow is how long after the CNI plugin last recorded a pod the
// endpoints are scanned for pending ones: longer than an ADD waits for
// its policy.
const pendingWindow = 15 * time.Second

// watchPending kicks a sync while an endpoint is pending. A pod is
// recorded (<stateDir>/pods) before its endpoint is written pending, so
// the endpoints are scanned only within pendingWindow of the records'
// directory changing, or while one is pending: an idle node costs a stat
// every pendingPoll, not a walk of the endpoints map.
func (n *netpol) watchPending(ctx context.Context, pol *maps.Policy) {
	dir := loader.PodRecordDir(n.stateDir)
	var lastMod, lastChange time.Time
	pending := false
	every(ctx, pendingPoll, func() {
		if fi, err := os.Stat(dir); err == nil && !fi.ModTime().Equal(lastMod) {
			lastMod, lastChange = fi.ModTime(), time.Now()
		}
		if !pending && time.Since(lastChange) > pendingWindow {
			return
		}
		flags, err := pol.Enforcement()
		if err != nil {
			return
		}
		pending = false
		for _, f := range flags {
			if f&maps.EndpointPolicyPending != 0 {
				pending = true
				n.kick()
				return
			}
		}
	})
}

// restore gives the pods the identities the pinned identities map has for
// their addresses, and the CIDRs theirs from the ipcache: a restarted
// agent computes the same state it left, and writes nothing.
func (n *netpol) restore(pol *maps.Policy) {
	have, err := pol.Identities()
	if err != nil {
		slog.Warn("policy: read the identities", "err", err)
		return
	}
	cidrs, err := pol.CIDRIdentities()
	if err != nil {
		slog.Warn("policy: read the ipcache", "err", err)
		return
	}
	pods, err := n.pods()
	if err != nil {
		return
	}
	for _, p := range pods {
		pp, ok := policyPod(p)
		if !ok {
			continue
		}
		if id, ok := have[netip.PrefixFrom(pp.IP, 32)]; ok {
			n.alloc.Restore(policy.PodKey(pp), id)
		}
	}
	for pfx, id := range cidrs {
		n.alloc.Restore(policy.CIDRKey(pfx), id)
	}
}

func (n *netpol) sync(w *policy.Writer) error {
	start := time.Now()
	pods, err := n.pods()
	if err != nil {
		return err
	}
	nss, err := n.nss()
	if err != nil {
		return err
	}
	pols, err := n.pols()
	if err != nil {
		return err
	}
	// A pod kubelet has not reported an address for yet, the CNI plugin
	// may have recorded one for.
	recorded, err := loader.RecordedPods(n.stateDir)
	if err != nil {
		slog.Warn("policy: read the pods' records", "err", err)
	}
	var pp []policy.Pod
	for _, p := range pods {
		key := p.Namespace + "/" + p.Name
		if rec, ok := recorded[key]; ok && p.Spec.NodeName == n.self {
			delete(recorded, key)
			if p.Status.PodIP == "" {
				p = p.DeepCopy()
				p.Status.PodIP = rec.Addr.String()
			}
		}
		if q, ok := policyPod(p); ok {
			pp = append(pp, q)
		}
	}
	// A recorded pod the API does not know after a grace (the agent's
	// watch lags kubelet's by milliseconds): a pod of a runtime's own
	// (crictl), which no policy can select by its labels; its namespace's
	// policies for every pod still apply.
	for key, rec := range recorded {
		if time.Since(rec.Written) < unknownPodGrace {
			continue
		}
		ns, name, _ := strings.Cut(key, "/")
		pp = append(pp, policy.Pod{Namespace: ns, Name: name, IP: rec.Addr, Node: n.self})
	}
	var ns []policy.Namespace
	for _, x := range nss {
		ns = append(ns, policy.Namespace{Name: x.Name, Labels: x.Labels})
	}
	st := policy.Compile(n.self, pp, ns, pols, n.alloc)
	for _, w := range st.Warnings {
		slog.Warn("policy", "warning", w)
	}
	ch, err := w.Write(st)
	n.met.policyEndpoints.Set(float64(len(st.Endpoints)))
	n.met.policyIdentities.Set(float64(len(st.Identities) + len(st.CIDRs)))
	if err != nil {
		return err
	}
	if ch != (policy.Changes{}) {
		slog.Info("policy written", "changes", ch.String(), "policies", len(pols), "took", time.Since(start))
	}
	if b, err := json.Marshal(st.Names); err == nil && string(b) != n.names {
		if err := policy.WriteNames(n.stateDir, st.Names); err != nil {
			slog.Warn("policy: write the names", "err", err)
		} else {
			n.names = string(b)
		}
	}
	return nil
}

// policyPod is what policy needs of a Pod: pods with their own IPv4
// address, running or about to (hostNetwork pods have the node's address,
// which is the node's identity; finished pods none that is theirs).
func policyPod(p *corev1.Pod) (policy.Pod, bool) {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return policy.Pod{}, false
	}
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil || !ip.Is4() {
		return policy.Pod{}, false
	}
	out := policy.Pod{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, IP: ip, Node: p.Spec.NodeName}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == "" {
				continue
			}
			proto := uint8(6)
			switch cp.Protocol {
			case corev1.ProtocolUDP:
				proto = 17
			case corev1.ProtocolSCTP:
				proto = 132
			}
			out.Ports = append(out.Ports, policy.NamedPort{Name: cp.Name, Proto: proto, Port: uint16(cp.ContainerPort)})
		}
	}
	return out, true
}
