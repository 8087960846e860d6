package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/podpath/podpath/loader"
)

// peerSyncDelay coalesces a burst of Node changes (a rollout, a cluster
// coming up) into one write; a Node's deletion still reaches the map well
// within a second.
const peerSyncDelay = 100 * time.Millisecond

// peers keeps the datapath's peers, every other Node's InternalIP and pod
// CIDRs, in step with the Node objects: a Node added or given its pod CIDR
// becomes a peer, one deleted stops being one, with its map entries and
// routes.
type peers struct {
	self    string
	node    loader.Config
	met     *metrics
	lister  func() ([]*corev1.Node, error)
	synced  cache.InformerSynced
	start   func(stop <-chan struct{})
	changed chan struct{}
	// last is what was written, to write again only on a difference.
	last []loader.Peer
}

func newPeers(client kubernetes.Interface, self string, node loader.Config, met *metrics) *peers {
	f := informers.NewSharedInformerFactory(client, 0)
	inf := f.Core().V1().Nodes()
	p := &peers{self: self, node: node, met: met, changed: make(chan struct{}, 1),
		lister: func() ([]*corev1.Node, error) {
			return inf.Lister().List(labels.Everything())
		},
	}
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { p.kick() },
		// kubelet updates its Node every few seconds; only an address or
		// a pod CIDR changes a peer.
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Node)
			c, ok2 := cur.(*corev1.Node)
			if !ok1 || !ok2 || !samePeerInfo(nodeInfoOf(o), nodeInfoOf(c)) {
				p.kick()
			}
		},
		DeleteFunc: func(any) { p.kick() },
	})
	p.synced = inf.Informer().HasSynced
	p.start = f.Start
	return p
}

func (p *peers) kick() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// run writes the peers after the first full list and after every change,
// and again every resync (repairing routes or entries removed by hand).
func (p *peers) run(ctx context.Context, resync time.Duration) error {
	p.start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), p.synced) {
		return ctx.Err()
	}
	t := time.NewTicker(resync)
	defer t.Stop()
	force := true
	for {
		if err := p.sync(force); err != nil {
			p.met.peerSyncErrors.Inc()
			slog.Warn("peers", "err", err)
			time.AfterFunc(time.Second, p.kick)
		}
		force = false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			force = true
		case <-p.changed:
			time.Sleep(peerSyncDelay)
		}
	}
}

// sync computes the peers from the Nodes and writes them when they differ
// from what was written last (or always, with force).
func (p *peers) sync(force bool) error {
	nodes, err := p.lister()
	if err != nil {
		return err
	}
	want, skipped := peersOf(p.self, p.node.PodCIDR, nodes)
	p.met.peers.Set(float64(len(want)))
	p.met.peersSkipped.Set(float64(len(skipped)))
	for name, why := range skipped {
		slog.Debug("node is no peer", "node", name, "reason", why)
	}
	if !force && slices.EqualFunc(want, p.last, equalPeer) {
		return nil
	}
	if err := loader.SetPeers(p.node, want); err != nil {
		return err
	}
	if !slices.EqualFunc(want, p.last, equalPeer) {
		slog.Info("peers written", "peers", len(want), "skipped", len(skipped))
	}
	p.last = want
	return nil
}

func equalPeer(a, b loader.Peer) bool {
	return a.Name == b.Name && a.Address == b.Address && slices.Equal(a.PodCIDRs, b.PodCIDRs)
}

// peersOf turns Nodes into peers, by name: every Node but self with an
// IPv4 InternalIP and IPv4 pod CIDRs. A Node whose pod CIDRs overlap this
// node's or an earlier peer's, or whose address another peer has, is left
// out (and said why) instead of failing the whole set: one broken Node
// object must not cut the node off from the others.
func peersOf(self string, own netip.Prefix, nodes []*corev1.Node) ([]loader.Peer, map[string]string) {
	skipped := map[string]string{}
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b *corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	var out []loader.Peer
	v := loader.NewPeerValidator(own)
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		info := nodeInfoOf(n)
		p := loader.Peer{Name: n.Name, Address: info.internalIP, PodCIDRs: info.podCIDRs}
		switch {
		case !p.Address.IsValid():
			skipped[n.Name] = "no IPv4 InternalIP"
			continue
		case len(p.PodCIDRs) == 0:
			skipped[n.Name] = "no IPv4 pod CIDR yet"
			continue
		}
		if err := v.Add(p); err != nil {
			skipped[n.Name] = err.Error()
			continue
		}
		out = append(out, p)
	}
	return out, skipped
}

func samePeerInfo(a, b nodeInfo) bool {
	return a.internalIP == b.internalIP && slices.Equal(a.podCIDRs, b.podCIDRs)
}
