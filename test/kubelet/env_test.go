// Package kubelet_test runs podpath on a real Kubernetes node: etcd,
// kube-apiserver, kube-controller-manager (allocating the Node's pod CIDR),
// kube-scheduler, containerd with runc, and kubelet, with no kube-proxy,
// all in a network namespace that plays the node, whose uplink eth0 leads
// to another namespace playing the outside network. podpath is installed
// as a user installs it: deploy/podpath.yaml applied with kubectl, its
// image built as `make image` builds it and imported into the node's
// containerd. The DaemonSet's pod, under that kubelet, loads the datapath
// from the Node kubelet registers and installs podpath-cni and its conflist
// where kubelet's containerd looks; Deployments, Services and pods then go
// in through the API as kubectl would send them. Needs root.
package kubelet_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podpath/podpath/internal/ctrtest"
	"github.com/podpath/podpath/internal/kubetest"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
)

const nodeName = "podpath-node"

var (
	// The node's uplink address and the outside host's, on one link.
	nodeAddr    = netip.MustParsePrefix("192.168.77.1/24")
	outsideAddr = netip.MustParsePrefix("192.168.77.2/24")
	// clusterCIDR is split into the nodes' pod CIDRs (/24 each) by
	// kube-controller-manager.
	clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
)

// env is a one-node cluster with podpath as its network.
type env struct {
	dir     string
	nodeNS  ns.NetNS // the node: control plane, kubelet, containerd, the agent's pod
	outside ns.NetNS // a host behind the node's uplink
	cluster *kubetest.Cluster
	node    *kubetest.Node
	podpath string // the podpath binary, for `podpath node reset`
	image   string // the image archive `make image` writes
	// pinRoot is the agent's pin root on the node (the DaemonSet's
	// default, in the node's own bpffs); pins is the same seen from here.
	pinRoot, pins string
}

// newEnv brings the node up and returns once it is Ready with the agent
// serving. Everything is torn down at the end of the test, failed or not:
// pods deleted, the DaemonSet's last, kubelet stopped once containerd runs
// no task, containerd, `podpath node reset`, the control plane, the
// namespaces.
func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("test/kubelet needs root (network and mount namespaces, BPF, containerd, kubelet)")
	}
	ctrtest.RequireTools(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare")
	busybox := ctrtest.RequireStaticBusybox(t)
	start := time.Now()
	e := &env{dir: t.TempDir(), pinRoot: maps.DefaultPinRoot}
	pause := filepath.Join(e.dir, "pause")
	e.build(t, filepath.Join(e.dir, "build"), pause)
	kubeBins := kubetest.Bins(t)
	t.Logf("built the podpath image (as make image does), podpath and pause; Kubernetes binaries in %s: %v", kubeBins, time.Since(start).Round(time.Millisecond))

	e.nodeNS, e.outside = newNetwork(t)
	upStart := time.Now()
	e.cluster = kubetest.Start(t, e.nodeNS, nodeAddr.Addr(), kubetest.Options{
		ControllerManager: true, ClusterCIDR: clusterCIDR.String(), NodeLifecycle: true, Scheduler: true,
	})
	t.Logf("control plane up (etcd, kube-apiserver, kube-controller-manager, kube-scheduler): %v", time.Since(upStart).Round(time.Millisecond))

	nodeStart := time.Now()
	e.node = e.cluster.StartNode(t, kubetest.NodeOptions{
		Name: nodeName, IP: nodeAddr.Addr(),
		Images: append(ctrtest.WriteImages(t, e.dir, pause, busybox), e.image),
		// Once the node is drained (the agent's pod last) and its
		// runtime gone: the plugin's DELs need the pins.
		Reset: func() { e.resetNode(t) },
	})
	e.pins = e.node.Path(e.pinRoot)
	if entries, _ := os.ReadDir(e.node.Path(e.node.CNIConfDir)); len(entries) != 0 {
		t.Fatalf("the CNI conf dir has %d entries before the agent ran", len(entries))
	}
	// Runs before the drain: the agent's log while its pod is there.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log (tail):\n%s", e.agentLog())
		}
	})
	e.installPodpath(t)
	pod := e.waitAgentReady(t)
	e.node.WaitReady(t, time.Minute)
	t.Logf("node up (containerd, kubelet, Node registered, pod CIDR allocated, DaemonSet pod %s Running and Ready, CNI installed, Node Ready): %v", pod, time.Since(nodeStart).Round(time.Millisecond))
	if dir := os.Getenv("PODPATH_TEST_LOGS"); dir != "" {
		// Runs first at the end: the logs as the failure left them.
		t.Cleanup(func() {
			if t.Failed() {
				e.keepLogs(t, dir)
			}
		})
	}
	return e
}

// installPodpath applies deploy/podpath.yaml as a user would, with kubectl
// apply, changed only where this node differs from the one it describes:
//   - the agent reaches the API server at the node's address (the
//     manifest's commented KUBERNETES_SERVICE_HOST and _PORT, set as a
//     cluster without kube-proxy needs them);
//   - on a cgroup v1 host (this one) socket load balancing uses a cgroup2
//     mount of the agent's own under /run/podpath, as the manifest says
//     for such hosts, in place of the host's cgroup v2 root.
//
// The image is the one `make image` builds, imported into the node's
// containerd under the manifest's name; the hostPaths are the node's own
// (see kubetest.Node.MountNS).
func (e *env) installPodpath(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "podpath.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	manifest := string(b)
	replace := func(old, new string) {
		t.Helper()
		if strings.Count(manifest, old) != 1 {
			t.Fatalf("deploy/podpath.yaml: want %q once", old)
		}
		manifest = strings.Replace(manifest, old, new, 1)
	}
	replace(`# - {name: KUBERNETES_SERVICE_HOST, value: "192.0.2.10"}`,
		fmt.Sprintf(`- {name: KUBERNETES_SERVICE_HOST, value: %q}`, e.cluster.Address))
	replace(`# - {name: KUBERNETES_SERVICE_PORT, value: "6443"}`,
		fmt.Sprintf(`- {name: KUBERNETES_SERVICE_PORT, value: "%d"}`, kubetest.APIServerPort))
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		replace("--socket-lb-cgroup=/host/sys/fs/cgroup", "--socket-lb-cgroup="+loader.DefaultCgroup2Mount)
	}
	kubectl := exec.Command("nsenter", "--net="+e.nodeNS.Path(), "--", filepath.Join(e.cluster.Bins, "kubectl"),
		"--kubeconfig", e.cluster.Kubeconfig, "--cache-dir", filepath.Join(e.dir, "kubectl-cache"), "apply", "-f", "-")
	kubectl.Stdin = strings.NewReader(manifest)
	out, err := kubectl.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply -f deploy/podpath.yaml: %v\n%s", err, out)
	}
	t.Logf("kubectl apply -f deploy/podpath.yaml:\n%s", strings.TrimSpace(string(out)))
}

// keepLogs copies every component's log into dir (PODPATH_TEST_LOGS) when
// the test failed, before teardown removes them.
func (e *env) keepLogs(t *testing.T, dir string) {
	dir = filepath.Join(dir, fmt.Sprintf("kubelet-%s", time.Now().Format("150405")))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Log(err)
		return
	}
	logs, _ := filepath.Glob(filepath.Join(e.cluster.Dir, "*.log"))
	logs = append(logs, e.agentLogs()...)
	for _, src := range append(logs, e.node.Runtime.Log) {
		if b, err := os.ReadFile(src); err == nil {
			os.WriteFile(filepath.Join(dir, filepath.Base(src)), b, 0o644)
		}
	}
	t.Logf("logs kept in %s", dir)
}

// build builds the image archive as `make image` does (tagged as the
// manifest names it), podpath into dir and the pause program, concurrently.
func (e *env) build(t *testing.T, dir, pause string) {
	t.Helper()
	goCmd := ctrtest.GoTool(t)
	e.image = filepath.Join(e.dir, "podpath-image.tar")
	steps := []func() error{
		func() error {
			cmd := exec.Command(goCmd, "run", "./deploy/image", "-o", e.image, "-tag", "dev")
			cmd.Dir = filepath.Join("..", "..")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("deploy/image: %v\n%s", err, out)
			}
			return nil
		},
		func() (err error) { e.podpath, err = sim.BuildPodpath(dir); return err },
		func() error { return ctrtest.BuildPause(goCmd, pause) },
	}
	errs := make([]error, len(steps))
	var wg sync.WaitGroup
	for i, step := range steps {
		wg.Go(func() { errs[i] = step() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("build: %v", err)
	}
}

// newNetwork makes the node's namespace, with forwarding on and an uplink
// eth0, and the outside host's at the other end of the link (forwarding
// off: a host, not a router). The node has no default route: an address it
// has no route to is unreachable at once, as a deleted ClusterIP becomes.
func newNetwork(t *testing.T) (node, outside ns.NetNS) {
	t.Helper()
	node, err := sim.NewNetNS("kubelet-node")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sim.RemoveNetNS(node); err != nil {
			t.Errorf("remove the node's namespace: %v", err)
		}
	})
	outside, err = sim.NewNetNS("kubelet-outside")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sim.RemoveNetNS(outside); err != nil {
			t.Errorf("remove the outside namespace: %v", err)
		}
	})
	setUp := func(name string, addr netip.Prefix, forward string) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if name != "eth0" {
			if err := netlink.LinkSetName(l, "eth0"); err != nil {
				return err
			}
		}
		ipn := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte(forward), 0o644)
	}
	err = node.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "eth0"
		veth := &netlink.Veth{LinkAttrs: la, PeerName: "outside0", PeerNamespace: netlink.NsFd(int(outside.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("uplink: %w", err)
		}
		return setUp("eth0", nodeAddr, "1")
	})
	if err == nil {
		err = outside.Do(func(ns.NetNS) error { return setUp("outside0", outsideAddr, "0") })
	}
	if err != nil {
		t.Fatalf("node network: %v", err)
	}
	return node, outside
}

// waitAgentReady waits for the DaemonSet's pod to be Running and Ready
// (its readiness probe is the agent's /readyz: the datapath loaded from the
// Node's pod CIDR and the CNI plugin installed), as the API reports it,
// and for /readyz to answer here too. It returns the pod's name.
func (e *env) waitAgentReady(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	var name, last string
	for end := time.Now().Add(2 * time.Minute); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		pods, err := e.cluster.Client.CoreV1().Pods(agentNamespace).List(ctx, metav1.ListOptions{LabelSelector: agentSelector})
		if err != nil {
			last = err.Error()
			continue
		}
		if len(pods.Items) != 1 {
			last = fmt.Sprintf("%d pods of the DaemonSet", len(pods.Items))
			continue
		}
		p := pods.Items[0]
		name, last = p.Name, fmt.Sprintf("pod %s on %q: %s", p.Name, p.Spec.NodeName, p.Status.Phase)
		ready := false
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				ready = c.Status == corev1.ConditionTrue
				last += ", Ready " + string(c.Status) + " " + c.Message
			}
		}
		if p.Spec.NodeName == nodeName && p.Status.Phase == corev1.PodRunning && ready {
			break
		}
		name = ""
	}
	if name == "" {
		t.Fatalf("the agent's pod not Running and Ready after 2 minutes (%s):\n%s\nkubelet log (tail):\n%s", last,
			e.agentLog(), e.cluster.LogTail("kubelet", 3000))
	}
	resp, err := e.cluster.HTTPClient().Get("http://127.0.0.1:10256/readyz")
	if err != nil {
		t.Fatalf("agent's pod %s Ready, but /readyz: %v", name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("agent's pod %s Ready, but /readyz: %s", name, resp.Status)
	}
	return name
}

const (
	agentNamespace = "kube-system"
	agentSelector  = "app.kubernetes.io/name=podpath"
)

// agentLogs are the agent container's logs, as kubelet keeps them (gone
// once kubelet removed the pod).
func (e *env) agentLogs() []string {
	logs, _ := filepath.Glob(filepath.Join(e.node.Dir, "pod-logs", agentNamespace+"_podpath-*", "agent", "*.log"))
	return logs
}

// agentLog is the end of each of the agent container's logs.
func (e *env) agentLog() string {
	logs := e.agentLogs()
	if len(logs) == 0 {
		return "(no log of the agent's container)"
	}
	var b strings.Builder
	for _, l := range logs {
		fmt.Fprintf(&b, "%s:\n%s\n", l, ctrtest.Tail(l, 6000))
	}
	return b.String()
}

// resetNode checks that the datapath has no endpoint left once every pod
// is gone and removes it, as a node leaving podpath does: `podpath node
// reset` with the agent's pin root and state dir, in the node's namespaces.
func (e *env) resetNode(t *testing.T) {
	if e.pins == "" {
		return
	}
	if eps, err := maps.OpenEndpoints(e.pins); err == nil {
		if list, err := eps.List(); err == nil && len(list) > 0 {
			t.Errorf("%d endpoints left in the datapath after every pod was deleted: %v", len(list), list)
		}
		eps.Close()
	}
	out, err := exec.Command("nsenter", "--net="+e.nodeNS.Path(), "--mount="+e.node.MountNS, "--", e.podpath,
		"--pin-root", e.pinRoot, "--state-dir", loader.DefaultStateDir, "node", "reset").CombinedOutput()
	if err != nil {
		t.Errorf("podpath node reset: %v\n%s", err, out)
	}
	if _, err := os.Stat(e.pins); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins left at %s after node reset (%v)", e.pinRoot, err)
	}
	if left := strings.TrimSpace(string(out)); left != "" {
		t.Logf("podpath node reset: %s", left)
	}
}
