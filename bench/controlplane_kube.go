package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podpath/podpath/internal/kubetest"
)

// The control plane the family runs against: etcd and kube-apiserver
// (internal/kubetest) in a namespace of their own with a bridge, cpbr0,
// that every contender's node namespace joins with a veth; the API server
// advertises the bridge's address, and every contender reaches it there.
var (
	cpAPIAddr   = netip.MustParsePrefix("10.250.0.1/24")
	cpEPBase    = netip.MustParseAddr("10.128.0.0") // endpoints of service i: cpEPBase + 10i + 1...
	cpNewEPBase = netip.MustParseAddr("10.140.0.0") // addresses the changes bring in
)

const (
	cpNamespace   = "cp-bench"
	cpManagedBy   = "bench.podpath.io"
	cpBridge      = "cpbr0"
	cpPort        = 80
	cpTargetPort  = 8080
	cpClusterCIDR = "10.244.0.0/16"
	// triggerAnnotation is the annotation both contenders measure network
	// programming latency from (v1.EndpointsLastChangeTriggerTime).
	triggerAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"
)

// benchTB is the bench's kubetest.TB: Fatal panics with tbFatal, which
// catchFatal turns back into an error; Cleanup functions run at close.
type benchTB struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

type tbFatal struct{ msg string }

var _ kubetest.TB = (*benchTB)(nil)

func (t *benchTB) Helper() {}

func (t *benchTB) Logf(format string, args ...any) {
	if t.Failed() {
		slog.Warn("kubetest: " + fmt.Sprintf(format, args...))
		return
	}
	slog.Debug("kubetest: " + fmt.Sprintf(format, args...))
}

func (t *benchTB) Fatal(args ...any)                 { t.fail(fmt.Sprint(args...)) }
func (t *benchTB) Fatalf(format string, args ...any) { t.fail(fmt.Sprintf(format, args...)) }

func (t *benchTB) fail(msg string) {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
	panic(tbFatal{msg})
}

func (t *benchTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *benchTB) Cleanup(fn func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, fn)
	t.mu.Unlock()
}

func (t *benchTB) TempDir() string {
	d, err := os.MkdirTemp("", "podpath-bench-kube-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// close runs the cleanups, newest first.
func (t *benchTB) close() error {
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return nil
		}
		fn := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		fn()
	}
}

// catchFatal turns a benchTB.Fatal below it into *err.
func catchFatal(err *error) {
	if r := recover(); r != nil {
		f, ok := r.(tbFatal)
		if !ok {
			panic(r)
		}
		*err = errors.New(f.msg)
	}
}

// cpCluster is the running control plane and the bench's client of it.
type cpCluster struct {
	ns         ns.NetNS
	kube       *kubetest.Cluster
	client     kubernetes.Interface // high QPS, for creating objects
	kubeconfig string               // for the contenders: the API at the bridge address
	bins       string
	close      func() error
}

// startControlPlane makes the control plane's namespace and bridge and
// starts etcd and kube-apiserver in it.
func startControlPlane(qps float32) (_ *cpCluster, err error) {
	n, rmNS, err := newNS("cp")
	if err != nil {
		return nil, err
	}
	tb := &benchTB{}
	stop := cleanup.add("control plane", tb.close)
	c := &cpCluster{ns: n}
	defer func() {
		if err != nil {
			stop()
			rmNS()
		}
	}()
	err = n.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = cpBridge
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return fmt.Errorf("add %s: %w", cpBridge, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := configureIf(n, cpBridge, cpAPIAddr); err != nil {
		return nil, err
	}
	if err := configureIf(n, "lo", netip.Prefix{}); err != nil {
		return nil, err
	}
	err = func() (err error) {
		defer catchFatal(&err)
		c.bins = kubetest.Bins(tb)
		c.kube = kubetest.Start(tb, n, cpAPIAddr.Addr(), kubetest.Options{})
		return nil
	}()
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	cfg := rest.CopyConfig(c.kube.Config)
	cfg.QPS, cfg.Burst = qps, int(2*qps)
	if c.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	// The contenders run elsewhere and reach the API server at the
	// bridge's address, which its certificate names.
	b, err := os.ReadFile(c.kube.Kubeconfig)
	if err != nil {
		return nil, err
	}
	local := fmt.Sprintf("https://127.0.0.1:%d", kubetest.APIServerPort)
	if !strings.Contains(string(b), local) {
		return nil, fmt.Errorf("kubeconfig %s does not name %s", c.kube.Kubeconfig, local)
	}
	c.kubeconfig = c.kube.Kubeconfig + ".bridge"
	remote := fmt.Sprintf("https://%s:%d", cpAPIAddr.Addr(), kubetest.APIServerPort)
	if err := os.WriteFile(c.kubeconfig, []byte(strings.ReplaceAll(string(b), local, remote)), 0o600); err != nil {
		return nil, err
	}
	closeNS := rmNS
	c.close = func() error {
		err := stop()
		return errors.Join(err, closeNS())
	}
	return c, nil
}

// attach joins a contender's node namespace to the control plane's bridge:
// eth0 with addr there, its peer a port of cpbr0.
func (c *cpCluster) attach(node ns.NetNS, port string, addr netip.Prefix) error {
	if err := addVeth(node, "eth0", c.ns, port, mtu); err != nil {
		return err
	}
	if err := configureIf(node, "eth0", addr); err != nil {
		return err
	}
	if err := configureIf(node, "lo", netip.Prefix{}); err != nil {
		return err
	}
	return c.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(port)
		if err != nil {
			return err
		}
		br, err := netlink.LinkByName(cpBridge)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("%s into %s: %w", port, cpBridge, err)
		}
		return netlink.LinkSetUp(l)
	})
}

// createNode creates the Node object a contender runs as.
func (c *cpCluster) createNode(ctx context.Context, name string, ip netip.Addr, podCIDR string) error {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}},
	}
	n, err := c.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}, {Type: corev1.NodeHostName, Address: name}}
	_, err = c.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

// cpObjects is the benchmark's Services and EndpointSlices as last written.
type cpObjects struct {
	n          int
	clusterIPs []netip.Addr
	slices     []*discoveryv1.EndpointSlice
	endpoints  int // over all slices
	nextNew    uint32
}

// endpointsOf is how many endpoints service i has: 1 to 10.
func endpointsOf(i int) int { return i%10 + 1 }

func cpServiceName(i int) string { return fmt.Sprintf("s-%05d", i) }

func cpSlice(i int, addrs []netip.Addr, trigger time.Time) *discoveryv1.EndpointSlice {
	name := cpServiceName(i)
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: name + "-1", Namespace: cpNamespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: name,
				discoveryv1.LabelManagedBy:   cpManagedBy,
			},
			Annotations: map[string]string{triggerAnnotation: trigger.UTC().Format(time.RFC3339Nano)},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(cpTargetPort)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	for _, a := range addrs {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
		})
	}
	return es
}

func ptr[T any](v T) *T { return &v }

// ensureNamespace creates the benchmark's namespace once.
func (c *cpCluster) ensureNamespace(ctx context.Context) error {
	_, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cpNamespace}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		return err
	}
	return nil
}

// create creates n Services, each with one EndpointSlice of 1 to 10
// ready endpoints (trigger time: just before its creation), from workers
// goroutines.
func (c *cpCluster) create(ctx context.Context, n, workers int) (*cpObjects, error) {
	o := &cpObjects{n: n, clusterIPs: make([]netip.Addr, n), slices: make([]*discoveryv1.EndpointSlice, n)}
	for i := range n {
		o.endpoints += endpointsOf(i)
	}
	err := parallel(ctx, n, workers, func(ctx context.Context, i int) error {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: cpServiceName(i), Namespace: cpNamespace},
			Spec: corev1.ServiceSpec{
				Type:  corev1.ServiceTypeClusterIP,
				Ports: []corev1.ServicePort{{Name: "http", Port: cpPort, TargetPort: intstr.FromInt32(cpTargetPort), Protocol: corev1.ProtocolTCP}},
			},
		}
		got, err := c.client.CoreV1().Services(cpNamespace).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create service %d: %w", i, err)
		}
		if o.clusterIPs[i], err = netip.ParseAddr(got.Spec.ClusterIP); err != nil {
			return fmt.Errorf("service %d: cluster IP %q", i, got.Spec.ClusterIP)
		}
		addrs := make([]netip.Addr, endpointsOf(i))
		for j := range addrs {
			addrs[j] = addrAdd(cpEPBase, uint32(10*i+j+1))
		}
		es, err := c.client.DiscoveryV1().EndpointSlices(cpNamespace).Create(ctx, cpSlice(i, addrs, time.Now()), metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create endpointslice %d: %w", i, err)
		}
		o.slices[i] = es
		return nil
	})
	return o, err
}

// change replaces the first endpoint of service i's slice with a new
// address (a pod replaced by another), trigger time now; it returns the new
// address and the trigger time.
func (c *cpCluster) change(ctx context.Context, o *cpObjects, i int) (netip.Addr, time.Time, error) {
	o.nextNew++
	addr := addrAdd(cpNewEPBase, o.nextNew)
	es := o.slices[i].DeepCopy()
	es.Endpoints[0].Addresses = []string{addr.String()}
	trigger := time.Now()
	es.Annotations[triggerAnnotation] = trigger.UTC().Format(time.RFC3339Nano)
	got, err := c.client.DiscoveryV1().EndpointSlices(cpNamespace).Update(ctx, es, metav1.UpdateOptions{})
	if err != nil {
		return addr, trigger, fmt.Errorf("update endpointslice %d: %w", i, err)
	}
	o.slices[i] = got
	return addr, trigger, nil
}

// deleteAll removes the benchmark's Services and EndpointSlices.
func (c *cpCluster) deleteAll(ctx context.Context, n, workers int) error {
	if err := c.client.DiscoveryV1().EndpointSlices(cpNamespace).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: discoveryv1.LabelManagedBy + "=" + cpManagedBy}); err != nil {
		return fmt.Errorf("delete endpointslices: %w", err)
	}
	return parallel(ctx, n, workers, func(ctx context.Context, i int) error {
		err := c.client.CoreV1().Services(cpNamespace).Delete(ctx, cpServiceName(i), metav1.DeleteOptions{})
		if err != nil && !strings.Contains(err.Error(), "not found") {
			return fmt.Errorf("delete service %d: %w", i, err)
		}
		return nil
	})
}

// parallel runs fn for 0..n-1 on workers goroutines; the first error stops
// the rest.
func parallel(ctx context.Context, n, workers int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}
