// Package sim runs throwaway podpath nodes on this machine: each node is a
// network namespace with its own pinned datapath, state and CNI
// configuration, and its pods are network namespaces connected by the real
// podpath-cni binary, driven through libcni the way a container runtime
// drives it. Tests and `podpath demo` use it; it needs root.
package sim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/loader"
	"github.com/vishvananda/netlink"
)

// IfName is the interface every simulated pod gets.
const IfName = "eth0"

// Node is a simulated node.
type Node struct {
	Name string
	// NS is the node's network namespace: the plugin runs in it, so the
	// host-side veths, node routes and attachments live there.
	NS       ns.NetNS
	PinRoot  string
	StateDir string
	ConfDir  string // holds the node's conflist, <NetName>.conflist
	CacheDir string // libcni's result cache
	NetName  string
	PodCIDR  netip.Prefix
	MTU      int
	CNIBin   string // directory holding the podpath plugin binary
	// Address is the node's address on its Underlay, if it has one.
	Address netip.Addr

	tmp     string // owned temporary directory, removed by Close
	netList *libcni.NetworkConfigList
	dns     types.DNS
	// deferTCX: the conflist asks ADD to attach with cls_bpf on a tcx
	// node (cni.NetConf.DeferTCX).
	deferTCX bool
	cni      *libcni.CNIConfig

	// Outside is the network behind the node's uplink, when it has one.
	Outside *Outside
	remotes []*Remote // behind the outside host (AddRemote)

	mu     sync.Mutex
	pods   map[string]*Pod
	closed bool
}

// Pod is a pod on a simulated node.
type Pod struct {
	Name        string
	ContainerID string
	NS          ns.NetNS
	IP          netip.Addr
	Result      *types100.Result
	// PortMappings are the hostPorts the runtime passes (the portMappings
	// capability), as containerd and Docker do for -p.
	PortMappings []PortMapping
	// Namespace is the Kubernetes namespace the runtime names in CNI_ARGS
	// (K8S_POD_NAMESPACE); "sim" unless WithNamespace says otherwise.
	Namespace string
	net       *libcni.NetworkConfigList // nil: the node's network
}

// PortMapping is one entry of the portMappings capability.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// PodOption adjusts a pod before its ADD.
type PodOption func(*Pod)

// WithNamespace names the pod's Kubernetes namespace in CNI_ARGS.
func WithNamespace(ns string) PodOption { return func(p *Pod) { p.Namespace = ns } }

// WithNetworkList attaches the pod through another network of the node
// (NewNetworkList) than its own.
func WithNetworkList(l *libcni.NetworkConfigList) PodOption { return func(p *Pod) { p.net = l } }

// WithPortMappings gives the pod hostPorts.
func WithPortMappings(pm ...PortMapping) PodOption {
	return func(p *Pod) { p.PortMappings = append(p.PortMappings, pm...) }
}

type options struct {
	cniBin   string
	netName  string
	mtu      int
	dns      types.DNS
	baseDir  string
	maxEps   uint32
	tcAttach string
	deferTCX bool
	uplink   *uplinkOptions
	underlay *underlayOptions
	tweak    func(*loader.Config)
	// pluginStderr receives the plugin's log; nil: this process's stderr.
	pluginStderr io.Writer
}

// Option configures NewNode.
type Option func(*options)

// WithCNIBin uses an already built plugin directory (see BuildCNI) instead
// of building one for the node.
func WithCNIBin(dir string) Option { return func(o *options) { o.cniBin = dir } }

// WithNetName names the node's CNI network (default "podpath").
func WithNetName(name string) Option { return func(o *options) { o.netName = name } }

// WithMTU sets the node's MTU (default loader.DefaultMTU).
func WithMTU(mtu int) Option { return func(o *options) { o.mtu = mtu } }

// WithDNS puts DNS settings in the network configuration; ADD passes them
// through to the result.
func WithDNS(dns types.DNS) Option { return func(o *options) { o.dns = dns } }

// WithDeferTCX puts "deferTCX" in the node's conflists: ADD attaches pods'
// programs with cls_bpf on a tcx node, for cni.MoveToTCX to move to tcx
// links, as the agent does.
func WithDeferTCX() Option { return func(o *options) { o.deferTCX = true } }

// WithMaxEndpoints sizes the node's endpoints map (default
// loader.DefaultMaxEndpoints).
func WithMaxEndpoints(max uint32) Option { return func(o *options) { o.maxEps = max } }

// WithLoaderConfig lets a test adjust the node's datapath configuration
// (map sizes, SNAT ranges, ...) before node init.
func WithLoaderConfig(fn func(*loader.Config)) Option { return func(o *options) { o.tweak = fn } }

// WithPluginStderr sends the plugin's log (its stderr) to w.
func WithPluginStderr(w io.Writer) Option { return func(o *options) { o.pluginStderr = w } }

// WithTCAttach picks the node's tc attach mechanism, loader.ModeTCX or
// loader.ModeLegacyTC (default: what the kernel offers).
func WithTCAttach(mode string) Option { return func(o *options) { o.tcAttach = mode } }

// WithBaseDir puts the node's state, configuration and cache directories
// under dir instead of a new temporary directory.
func WithBaseDir(dir string) Option { return func(o *options) { o.baseDir = dir } }

// uniqueName makes namespace and pin names unique to this process, so
// parallel test binaries never collide.
func uniqueName(parts ...string) string {
	s := "pp"
	for _, p := range parts {
		s += "-" + p
	}
	return fmt.Sprintf("%s-%d", s, os.Getpid())
}

// NewNode creates a node: a network namespace with loopback up and IPv4
// forwarding off, the datapath loaded and pinned under
// /sys/fs/bpf/podpath-sim-<name>-<pid>, and a conflist that leaves the pod
// CIDR and MTU to the node's recorded configuration, as a real node's would.
// Everything made is removed again when NewNode fails.
func NewNode(name string, podCIDR netip.Prefix, opts ...Option) (_ *Node, err error) {
	o := options{netName: "podpath", mtu: loader.DefaultMTU}
	for _, opt := range opts {
		opt(&o)
	}
	n := &Node{
		Name:    name,
		PinRoot: filepath.Join(loader.BPFFSMount, fmt.Sprintf("podpath-sim-%s-%d", name, os.Getpid())),
		NetName: o.netName,
		PodCIDR: podCIDR,
		MTU:     o.mtu,
		pods:    map[string]*Pod{},
	}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	base := o.baseDir
	if base == "" {
		if n.tmp, err = os.MkdirTemp("", "podpath-sim-"+name+"-"); err != nil {
			return nil, err
		}
		base = n.tmp
	}
	n.StateDir = filepath.Join(base, "state")
	n.ConfDir = filepath.Join(base, "net.d")
	n.CacheDir = filepath.Join(base, "cache")
	for _, d := range []string{n.StateDir, n.ConfDir, n.CacheDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	n.CNIBin = o.cniBin
	if n.CNIBin == "" {
		if n.CNIBin, err = BuildCNI(filepath.Join(base, "bin")); err != nil {
			return nil, err
		}
	}

	if n.NS, err = newNetNS(uniqueName(name)); err != nil {
		return nil, err
	}
	var uplinks []string
	if o.uplink != nil {
		if err := n.addUplink(o.uplink); err != nil {
			return nil, err
		}
		uplinks = []string{UplinkName}
	}
	if o.underlay != nil {
		if err := o.underlay.u.attach(n.NS, UplinkName, o.underlay.addr); err != nil {
			return nil, err
		}
		n.Address = o.underlay.addr.Addr()
		uplinks = []string{UplinkName}
	}
	err = n.NS.Do(func(ns.NetNS) error {
		// Without an uplink nothing needs routing by the node, so pod
		// traffic that flows at all was carried by eBPF. With one, the node
		// routes like any Kubernetes node (and bpf_fib_lookup requires it).
		forward := "0"
		if len(uplinks) > 0 {
			forward = "1"
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte(forward), 0o644); err != nil {
			return fmt.Errorf("set forwarding: %w", err)
		}
		cfg := loader.Config{
			PinRoot:      n.PinRoot,
			StateDir:     n.StateDir,
			PodCIDR:      podCIDR,
			MTU:          n.MTU,
			MaxEndpoints: o.maxEps,
			TCAttach:     o.tcAttach,
			Uplinks:      uplinks,
			// Native even on the veth uplinks (auto leaves veths
			// without XDP), so that tests run xdp_netdev.
			XDPMode: loader.XDPNative,
		}
		if o.tweak != nil {
			o.tweak(&cfg)
		}
		if err := loader.Init(cfg); err != nil {
			return err
		}
		// An MTU left to the node is the one it chose.
		got, err := loader.ReadNodeConfig(n.StateDir)
		if err != nil {
			return err
		}
		n.MTU = got.MTU
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}

	n.dns = o.dns
	n.deferTCX = o.deferTCX
	if n.netList, err = n.NewNetworkList(n.NetName); err != nil {
		return nil, err
	}
	var exec invoke.Exec
	if o.pluginStderr != nil {
		exec = &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: o.pluginStderr}, PluginDecoder: version.PluginDecoder{}}
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{n.CNIBin}, n.CacheDir, exec)
	slog.Debug("sim node up", "node", name, "netns", n.NS.Path(), "pinRoot", n.PinRoot)
	return n, nil
}

// ConfPath is the node's conflist.
func (n *Node) ConfPath() string { return filepath.Join(n.ConfDir, n.NetName+".conflist") }

// NewNetworkList writes a conflist of the node's network under another
// name, <name>.conflist in ConfDir, and returns it parsed: a second podpath
// network on the node (WithNetworkList attaches pods through it), reaching
// the networks named in reaches.
func (n *Node) NewNetworkList(name string, reaches ...string) (*libcni.NetworkConfigList, error) {
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       name,
		"plugins": []map[string]any{{
			"type":         PluginType,
			"pinRoot":      n.PinRoot,
			"stateDir":     n.StateDir,
			"capabilities": map[string]bool{"portMappings": true},
		}},
	}
	if !n.dns.IsEmpty() {
		conf["plugins"].([]map[string]any)[0]["dns"] = n.dns
	}
	if len(reaches) > 0 {
		conf["plugins"].([]map[string]any)[0]["reaches"] = reaches
	}
	if n.deferTCX {
		conf["plugins"].([]map[string]any)[0]["deferTCX"] = true
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(n.ConfDir, name+".conflist"), b, 0o600); err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(b)
}

// listOf is the network p is attached through.
func (n *Node) listOf(p *Pod) *libcni.NetworkConfigList {
	if p.net != nil {
		return p.net
	}
	return n.netList
}

// NetworkList is the node's parsed conflist.
func (n *Node) NetworkList() *libcni.NetworkConfigList { return n.netList }

// CNI is the libcni client the node drives its plugin with.
func (n *Node) CNI() *libcni.CNIConfig { return n.cni }

// Do runs fn in the node's network namespace, on a locked thread, as the
// plugin and the loader expect.
func (n *Node) Do(fn func() error) error {
	return n.NS.Do(func(ns.NetNS) error { return fn() })
}

// Pods returns the node's pods.
func (n *Node) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*Pod, 0, len(n.pods))
	for _, p := range n.pods {
		out = append(out, p)
	}
	return out
}

func (p *Pod) namespace() string {
	if p.Namespace == "" {
		return "sim"
	}
	return p.Namespace
}

// RuntimeConf is what a runtime would pass libcni for the pod.
func (p *Pod) RuntimeConf() *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		IfName:      IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.namespace()},
			{"K8S_POD_NAME", p.Name},
		},
	}
	if p.NS != nil {
		rt.NetNS = p.NS.Path()
	}
	if len(p.PortMappings) > 0 {
		rt.CapabilityArgs = map[string]any{"portMappings": p.PortMappings}
	}
	return rt
}

// AddPod creates a pod's network namespace and connects it with a CNI ADD.
// A failed ADD is followed by a DEL, as runtimes do, and the namespace is
// removed.
func (n *Node) AddPod(ctx context.Context, name string, opts ...PodOption) (_ *Pod, err error) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, errors.New("node closed")
	}
	if _, dup := n.pods[name]; dup {
		n.mu.Unlock()
		return nil, fmt.Errorf("pod %s already exists on node %s", name, n.Name)
	}
	n.pods[name] = nil // reserve the name
	n.mu.Unlock()
	defer func() {
		if err != nil {
			n.mu.Lock()
			delete(n.pods, name)
			n.mu.Unlock()
		}
	}()

	p := &Pod{Name: name, ContainerID: newContainerID()}
	for _, o := range opts {
		o(p)
	}
	if p.NS, err = newNetNS(uniqueName(n.Name, name)); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			removeNetNS(p.NS)
		}
	}()
	var res types.Result
	err = n.Do(func() error {
		var err error
		res, err = n.cni.AddNetworkList(ctx, n.listOf(p), p.RuntimeConf())
		if err != nil {
			if derr := n.cni.DelNetworkList(ctx, n.listOf(p), p.RuntimeConf()); derr != nil {
				slog.Warn("sim: DEL after failed ADD", "pod", name, "err", derr)
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("add pod %s: %w", name, err)
	}
	if p.Result, err = types100.NewResultFromResult(res); err != nil {
		return nil, err
	}
	for _, ipc := range p.Result.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			p.IP = a.Unmap()
			break
		}
	}
	if !p.IP.IsValid() {
		return nil, fmt.Errorf("add pod %s: result has no address", name)
	}
	n.mu.Lock()
	n.pods[name] = p
	n.mu.Unlock()
	return p, nil
}

// DelPod disconnects a pod with a CNI DEL and removes its namespace.
func (n *Node) DelPod(ctx context.Context, p *Pod) error {
	err := n.Do(func() error { return n.cni.DelNetworkList(ctx, n.listOf(p), p.RuntimeConf()) })
	if err != nil {
		return fmt.Errorf("delete pod %s: %w", p.Name, err)
	}
	n.mu.Lock()
	if n.pods[p.Name] == p {
		delete(n.pods, p.Name)
	}
	n.mu.Unlock()
	if err := removeNetNS(p.NS); err != nil {
		return err
	}
	p.NS = nil
	return nil
}

// CheckPod runs a CNI CHECK on a pod.
func (n *Node) CheckPod(ctx context.Context, p *Pod) error {
	return n.Do(func() error { return n.cni.CheckNetworkList(ctx, n.listOf(p), p.RuntimeConf()) })
}

// GC runs a CNI GC that keeps only the given pods. libcni first sends DEL
// for cached attachments that are not kept, then GC to the plugin.
func (n *Node) GC(ctx context.Context, keep ...*Pod) error {
	return n.GCNetwork(ctx, n.netList, keep...)
}

// GCNetwork is GC of one network of the node.
func (n *Node) GCNetwork(ctx context.Context, l *libcni.NetworkConfigList, keep ...*Pod) error {
	args := &libcni.GCArgs{}
	for _, p := range keep {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.ContainerID, IfName: IfName})
	}
	return n.Do(func() error { return n.cni.GCNetworkList(ctx, l, args) })
}

// Status runs a CNI STATUS.
func (n *Node) Status(ctx context.Context) error {
	return n.Do(func() error { return n.cni.GetStatusNetworkList(ctx, n.netList) })
}

// HostVeth returns the node-side device named name.
func (n *Node) HostVeth(name string) (netlink.Link, error) {
	var l netlink.Link
	err := n.Do(func() error {
		var err error
		l, err = netlink.LinkByName(name)
		return err
	})
	return l, err
}

// Close deletes every pod (CNI DEL), unloads the datapath, and removes the
// namespaces, pins and directories. It may be called more than once.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	var pods []*Pod
	for _, p := range n.pods {
		if p != nil {
			pods = append(pods, p)
		}
	}
	n.mu.Unlock()

	var errs []error
	ctx := context.Background()
	if n.NS != nil {
		for _, p := range pods {
			if err := n.DelPod(ctx, p); err != nil {
				errs = append(errs, err)
				removeNetNS(p.NS)
			}
		}
		errs = append(errs, n.Do(func() error { return loader.Reset(n.PinRoot, n.StateDir) }))
		errs = append(errs, removeNetNS(n.NS))
		n.NS = nil
	} else {
		// NewNode failed before the node's namespace existed.
		for _, p := range pods {
			removeNetNS(p.NS)
		}
	}
	for _, r := range n.remotes {
		errs = append(errs, removeNetNS(r.NS))
	}
	n.remotes = nil
	if n.Outside != nil {
		errs = append(errs, removeNetNS(n.Outside.NS))
		n.Outside = nil
	}
	if err := os.RemoveAll(n.PinRoot); err != nil {
		errs = append(errs, err)
	}
	if n.tmp != "" {
		if err := os.RemoveAll(n.tmp); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func newContainerID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}
