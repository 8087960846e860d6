// Package kubelet_test runs podpath on a real Kubernetes node: etcd,
// kube-apiserver, kube-controller-manager (allocating the Node's pod CIDR),
// kube-scheduler, containerd with runc, and kubelet, with no kube-proxy,
// all in a network namespace that plays the node, whose uplink eth0 leads
// to another namespace playing the outside network. `podpath agent` loads
// the datapath from the Node kubelet registers and installs podpath-cni and
// its conflist where kubelet's containerd looks; Deployments, Services and
// pods then go in through the API as kubectl would send them. Needs root.
package kubelet_test

import (
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

	"github.com/podpath/podpath/internal/ctrtest"
	"github.com/podpath/podpath/internal/kubetest"
	"github.com/podpath/podpath/internal/sim"
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
	dir      string
	nodeNS   ns.NetNS // the node: control plane, kubelet, containerd, agent
	outside  ns.NetNS // a host behind the node's uplink
	cluster  *kubetest.Cluster
	node     *kubetest.Node
	podpath  string // the podpath binary
	pinRoot  string
	stateDir string
}

// newEnv brings the node up and returns once it is Ready with the agent
// serving. Everything is torn down at the end of the test, failed or not:
// pods deleted, kubelet stopped once containerd runs no task, containerd,
// the agent, `podpath node reset`, the control plane, the namespaces.
func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("test/kubelet needs root (network and mount namespaces, BPF, containerd, kubelet)")
	}
	ctrtest.RequireTools(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare")
	busybox := ctrtest.RequireStaticBusybox(t)
	start := time.Now()
	e := &env{dir: t.TempDir()}
	e.pinRoot = fmt.Sprintf("/sys/fs/bpf/podpath-kubelet-%d", os.Getpid())
	e.stateDir = filepath.Join(e.dir, "state")
	cniBin, cniConf := filepath.Join(e.dir, "cni-bin"), filepath.Join(e.dir, "cni-conf")
	build := filepath.Join(e.dir, "build")
	pause := filepath.Join(e.dir, "pause")
	e.build(t, build, cniBin, pause)
	kubeBins := kubetest.Bins(t)
	t.Logf("built podpath, podpath-cni, loopback and pause; Kubernetes binaries in %s: %v", kubeBins, time.Since(start).Round(time.Millisecond))

	e.nodeNS, e.outside = newNetwork(t)
	upStart := time.Now()
	e.cluster = kubetest.Start(t, e.nodeNS, nodeAddr.Addr(), kubetest.Options{
		ControllerManager: true, ClusterCIDR: clusterCIDR.String(), NodeLifecycle: true, Scheduler: true,
	})
	t.Logf("control plane up (etcd, kube-apiserver, kube-controller-manager, kube-scheduler): %v", time.Since(upStart).Round(time.Millisecond))

	// Registered before the node, so it runs after the node is drained
	// and its runtime gone: the plugin's DELs need the pins.
	t.Cleanup(func() { e.stopAgent(t) })

	nodeStart := time.Now()
	e.node = e.cluster.StartNode(t, kubetest.NodeOptions{
		Name: nodeName, IP: nodeAddr.Addr(), CNIBinDir: cniBin, CNIConfDir: cniConf,
		Images: ctrtest.WriteImages(t, e.dir, pause, busybox),
	})
	if entries, _ := os.ReadDir(cniConf); len(entries) != 0 {
		t.Fatalf("the CNI conf dir has %d entries before the agent ran", len(entries))
	}
	// The agent runs as a process in the node's namespaces, not as the
	// DaemonSet of deploy/: that needs its image in the node's containerd
	// and a registry or an image build, which this test has neither of.
	// Its flags are the DaemonSet's, with this test's private paths (pins,
	// state, the CNI dirs kubelet's containerd reads, the root of a
	// cgroup2 mount of its own: the host runs cgroup v1) and a kubeconfig
	// in place of the in-cluster configuration.
	e.cluster.RunProcess(t, "podpath-agent", e.node.MountNS, e.podpath,
		"--pin-root", e.pinRoot, "--state-dir", e.stateDir, "agent",
		"--kubeconfig", e.cluster.Kubeconfig,
		"--node-name", nodeName,
		"--cluster-cidr", clusterCIDR.String(),
		"--cluster-cidr", kubetest.ServiceCIDR.String(),
		"--cni-bin-dir", cniBin,
		"--cni-conf-dir", cniConf,
		"--cni-bin-source", filepath.Join(build, sim.PluginType),
		"--socket-lb-cgroup", filepath.Join(e.dir, "cgroupv2"),
		"-v",
	)
	e.waitAgentReady(t)
	e.node.WaitReady(t, time.Minute)
	t.Logf("node up (containerd, kubelet, Node registered, pod CIDR allocated, agent ready, CNI installed, Node Ready): %v", time.Since(nodeStart).Round(time.Millisecond))
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

// keepLogs copies every component's log into dir (PODPATH_TEST_LOGS) when
// the test failed, before teardown removes them.
func (e *env) keepLogs(t *testing.T, dir string) {
	dir = filepath.Join(dir, fmt.Sprintf("kubelet-%s", time.Now().Format("150405")))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Log(err)
		return
	}
	logs, _ := filepath.Glob(filepath.Join(e.cluster.Dir, "*.log"))
	for _, src := range append(logs, e.node.Runtime.Log) {
		if b, err := os.ReadFile(src); err == nil {
			os.WriteFile(filepath.Join(dir, filepath.Base(src)), b, 0o644)
		}
	}
	t.Logf("logs kept in %s", dir)
}

// build builds podpath and podpath-cni into dir, the loopback plugin into
// the CNI bin dir and the pause program, concurrently.
func (e *env) build(t *testing.T, dir, cniBin, pause string) {
	t.Helper()
	goCmd := ctrtest.GoTool(t)
	steps := []func() error{
		func() (err error) { e.podpath, err = sim.BuildPodpath(dir); return err },
		func() error { _, err := sim.BuildCNI(dir); return err },
		func() error { return ctrtest.BuildLoopback(goCmd, cniBin) },
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

// waitAgentReady waits for the agent's /readyz: the datapath loaded from
// the Node's pod CIDR and the CNI plugin installed.
func (e *env) waitAgentReady(t *testing.T) {
	t.Helper()
	hc := e.cluster.HTTPClient()
	var last string
	for end := time.Now().Add(90 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		resp, err := hc.Get("http://127.0.0.1:10256/readyz")
		if err != nil {
			last = err.Error()
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return
		}
		last = resp.Status
	}
	t.Fatalf("agent not ready after 90 s (%s):\n%s\nkubelet log (tail):\n%s", last,
		e.cluster.LogTail("podpath-agent", 6000), e.cluster.LogTail("kubelet", 3000))
}

// stopAgent stops the agent and removes the datapath: `podpath node reset`
// with the node's pin root and state dir, in the node's namespace.
func (e *env) stopAgent(t *testing.T) {
	e.cluster.StopProcess(t, "podpath-agent")
	if t.Failed() {
		t.Logf("agent log (tail):\n%s", e.cluster.LogTail("podpath-agent", 6000))
	}
	if eps, err := maps.OpenEndpoints(e.pinRoot); err == nil {
		if list, err := eps.List(); err == nil && len(list) > 0 {
			t.Errorf("%d endpoints left in the datapath after every pod was deleted: %v", len(list), list)
		}
		eps.Close()
	}
	out, err := exec.Command("nsenter", "--net="+e.nodeNS.Path(), "--", e.podpath,
		"--pin-root", e.pinRoot, "--state-dir", e.stateDir, "node", "reset").CombinedOutput()
	if err != nil {
		t.Errorf("podpath node reset: %v\n%s", err, out)
	}
	if _, err := os.Stat(e.pinRoot); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins left at %s after node reset (%v)", e.pinRoot, err)
		os.RemoveAll(e.pinRoot)
	}
	if left := strings.TrimSpace(string(out)); left != "" {
		t.Logf("podpath node reset: %s", left)
	}
}
