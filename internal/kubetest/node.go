package kubetest

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podpath/podpath/internal/ctrtest"
)

// RunProcess starts bin as name in the cluster's network namespace and,
// when mountNS is not empty, in that mount namespace (a path such as
// /proc/<pid>/ns/mnt), its output in LogPath(name). StopProcess ends it
// (SIGTERM, then SIGKILL after 10 s); the caller stops it before the end of
// the test.
func (c *Cluster) RunProcess(t TB, name, mountNS, bin string, args ...string) {
	t.Helper()
	if mountNS != "" {
		// nsenter execs in place, so the PID is the program's own.
		args = append([]string{"--mount=" + mountNS, "--", bin}, args...)
		bin = "nsenter"
	}
	c.start(t, name, bin, args...)
}

// StopProcess stops a process RunProcess started.
func (c *Cluster) StopProcess(t TB, name string) { c.stop(t, name) }

// LogPath is where the output of the process started as name goes.
func (c *Cluster) LogPath(name string) string { return filepath.Join(c.Dir, name+".log") }

// LogTail is the end of a process's output, for failure reports.
func (c *Cluster) LogTail(name string, n int) string {
	b, err := os.ReadFile(c.LogPath(name))
	if err != nil {
		return err.Error()
	}
	return tail(string(b), n)
}

// Node is a real node of the cluster: kubelet, and containerd with runc,
// in the cluster's network namespace (the control plane runs on the node,
// as on a one-node cluster) and in a mount namespace of the node's own,
// where kubelet's volume mounts, containerd's overlays and the pods'
// network namespace mounts live and die with the node. The node's network
// (a CNI plugin and its conflist in CNIBinDir and CNIConfDir) is someone
// else's to install: until it is, the node is NotReady.
type Node struct {
	Name string
	IP   netip.Addr // InternalIP
	Dir  string
	// MountNS is the node's mount namespace, /proc/<pid>/ns/mnt of the
	// process that holds it. /var/log, /var/lib and /run are tmpfs there
	// (kubelet and containerd use some fixed paths in them), as are the
	// CNI directories /opt/cni/bin and /etc/cni/net.d, /sys/fs/bpf is a
	// bpffs of its own, and the kernel settings kubelet insists on writing
	// (see kernelTunables) are files of its own. So a pod's hostPath
	// volumes there are the node's, not the host's: what a DaemonSet
	// installs or pins dies with the node. Those mounts are shared, so
	// that Bidirectional and HostToContainer mount propagation works as on
	// a systemd host. Paths to the node's files outside those (the test's
	// temporary directories) are the same inside and out; Path reaches
	// the others from outside.
	MountNS string
	// Root is the node's root directory seen from outside, through the
	// process that holds its mount namespace: /proc/<pid>/root.
	Root string
	// CNIBinDir and CNIConfDir are where kubelet's containerd looks for
	// CNI plugins and conflists: the usual /opt/cni/bin and
	// /etc/cni/net.d, the node's own (see MountNS).
	CNIBinDir, CNIConfDir string
	Runtime               *ctrtest.Containerd
	// CgroupRoot is kubelet's cgroup root, made in every hierarchy before
	// kubelet starts and removed at the end.
	CgroupRoot string

	c *Cluster
}

// NodeOptions describe a node.
type NodeOptions struct {
	Name string
	// IP is the node's InternalIP: an address of the cluster's namespace.
	IP netip.Addr
	// Images are docker-save or OCI archives imported into containerd
	// before kubelet starts (ctrtest.WriteImages): at least the pause
	// image.
	Images []string
	// Reset, if set, runs at the end once the node is drained and its
	// runtime stopped, while its mount namespace is still there: to check
	// and remove what the node's network left on it.
	Reset func()
}

// kernelTunables are the sysctls kubelet checks at start and, unless they
// hold these values, writes (or with protectKernelDefaults refuses to
// start). They are global to the host: in the node's mount namespace a
// file with the expected value is bound over each that differs, so
// kubelet finds it set and the host keeps its own.
var kernelTunables = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// kubeletConfig is the node's KubeletConfiguration. On this kind of host:
// cgroup v1 (failCgroupV1 false) with the cgroupfs driver, under a cgroup
// root of the node's own; every directory kubelet would take from the host
// (pod logs, volume plugins) under Dir; no DNS; the API server's client
// certificate authenticates it to kubelet (logs, exec); eviction and image
// GC thresholds out of the way of a shared disk.
var kubeletConfig = template.Must(template.New("kubelet").Parse(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {{.CgroupRoot}}
containerRuntimeEndpoint: unix://{{.Sock}}
address: {{.IP}}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: {{.CA}}}
authorization: {mode: AlwaysAllow}
podLogsDir: {{.Dir}}/pod-logs
volumePluginDir: {{.Dir}}/volume-plugins
resolvConf: ""
clusterDomain: cluster.local
failSwapOn: false
makeIPTablesUtilChains: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
`))

// StartNode starts a node: its mount namespace, containerd (with the
// images imported) and kubelet, which registers the Node. It returns
// without waiting for the node to be Ready (see WaitReady). At the end of
// the test every Deployment, ReplicaSet and pod is deleted, then every
// DaemonSet, kubelet stopped once containerd runs no task, then
// containerd; Reset runs, and the mount namespace and cgroups are removed.
func (c *Cluster) StartNode(t *testing.T, o NodeOptions) *Node {
	t.Helper()
	ctrtest.RequireTools(t, "unshare", "nsenter", "sh", "mount", "sleep")
	n := &Node{Name: o.Name, IP: o.IP, Dir: t.TempDir(), CNIBinDir: "/opt/cni/bin", CNIConfDir: "/etc/cni/net.d",
		CgroupRoot: fmt.Sprintf("/podpath-kubelet-%d", os.Getpid()), c: c}
	n.startMountNS(t)
	if err := makeCgroup(n.CgroupRoot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ctrtest.RemoveCgroups(n.CgroupRoot); err != nil {
			t.Errorf("remove kubelet's cgroups: %v", err)
		}
	})
	if o.Reset != nil {
		t.Cleanup(o.Reset)
	}

	n.Runtime = ctrtest.Start(t, ctrtest.Options{NetNS: c.NS.Path(), MountNS: n.MountNS, BinDir: n.CNIBinDir, ConfDir: n.CNIConfDir})
	n.Runtime.WaitServing(t, 20*time.Second)
	n.Runtime.ImportImages(t, o.Images)

	var cfg strings.Builder
	err := kubeletConfig.Execute(&cfg, map[string]string{
		"CgroupRoot": n.CgroupRoot,
		"Sock":       n.Runtime.Sock,
		"IP":         o.IP.String(),
		"CA":         c.pki.file("ca.crt"),
		"Dir":        n.Dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	c.RunProcess(t, "kubelet", n.MountNS, filepath.Join(c.Bins, "kubelet"),
		"--config="+cfgPath,
		"--kubeconfig="+c.Kubeconfig,
		"--root-dir="+filepath.Join(n.Dir, "kubelet"),
		"--cert-dir="+filepath.Join(n.Dir, "kubelet-pki"),
		"--hostname-override="+o.Name,
		"--node-ip="+o.IP.String(),
		"--v=1",
	)
	t.Cleanup(func() { n.drain(t) })
	return n
}

// startMountNS starts the process that holds the node's mount namespace:
// a slave of the host's (host mounts still show, the node's do not go
// back), /var/log, /var/lib, /run and the CNI directories tmpfs of its own,
// /sys/fs/bpf a bpffs of its own, kernel tunables masked. It is killed at
// the end.
func (n *Node) startMountNS(t *testing.T) {
	t.Helper()
	// The CNI directories are mount points: made on the host when it has
	// none (empty, where CNI keeps them on any node), never written there.
	for _, dir := range []string{n.CNIBinDir, n.CNIConfDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Paths kubelet and containerd 1.6 use whatever their configuration
	// says: /var/log/containers, /var/lib/kubelet/device-plugins, libcni's
	// cache in /var/lib/cni, shim sockets in /run/containerd. The others
	// are the hostPaths a node's network DaemonSet uses.
	script := []string{"set -e"}
	for _, dir := range []string{"/var/log", "/var/lib", "/run", n.CNIBinDir, n.CNIConfDir} {
		script = append(script, "mount -t tmpfs tmpfs "+dir)
	}
	script = append(script, "mount -t bpf bpf /sys/fs/bpf")
	dir := filepath.Join(n.Dir, "sysctl")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, want := range kernelTunables {
		proc := filepath.Join("/proc/sys", name)
		have, err := os.ReadFile(proc)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(have)) == want {
			continue
		}
		file := filepath.Join(dir, strings.ReplaceAll(name, "/", "."))
		if err := os.WriteFile(file, []byte(want+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
		script = append(script, fmt.Sprintf("mount --bind %s %s", file, proc))
	}
	// Every mount shared within the node, as systemd leaves a host's (and
	// still a slave of the host's): containerd requires the source of a
	// Bidirectional volume to be shared, and checks the first mount on
	// its mount point, the host's where a node's own is stacked on it.
	script = append(script, "mount --make-rshared /", "echo ready", "exec sleep infinity")
	cmd := exec.Command("unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", strings.Join(script, "\n"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the node's mount namespace: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
	})
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line == "ready\n"
	}()
	select {
	case ok := <-ready:
		if !ok {
			<-done
			t.Fatalf("the node's mount namespace: %s", stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the node's mount namespace not set up after 10 s: %s", stderr.String())
	}
	n.MountNS = fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid)
	n.Root = fmt.Sprintf("/proc/%d/root", cmd.Process.Pid)
}

// Path is the node's path p as seen from outside its mount namespace.
func (n *Node) Path(p string) string { return filepath.Join(n.Root, p) }

// makeCgroup creates cgroup path in every hierarchy (cgroup v1 has one per
// controller, v2 a single one), as kubelet wants its cgroup root to exist.
func makeCgroup(path string) error {
	roots := []string{"/sys/fs/cgroup"}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		entries, err := os.ReadDir("/sys/fs/cgroup")
		if err != nil {
			return err
		}
		roots = roots[:0]
		for _, e := range entries {
			roots = append(roots, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	for _, root := range roots {
		if err := os.Mkdir(filepath.Join(root, path), 0o755); err != nil && !os.IsExist(err) {
			return err
		}
	}
	return nil
}

// WaitReady waits until the Node is Ready.
func (n *Node) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	var last string
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		node, err := n.c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			continue
		}
		last = "no Ready condition"
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status == corev1.ConditionTrue {
					return
				}
				last = cond.Reason + ": " + cond.Message
			}
		}
	}
	t.Fatalf("node %s not Ready after %v: %s\nkubelet log (tail):\n%s", n.Name, timeout, last, n.c.LogTail("kubelet", 4000))
}

// PodNetNS is the network namespace of a running pod, as a path valid
// while its first container runs (the runtime's own bind mount lives in
// the node's mount namespace).
func (n *Node) PodNetNS(t testing.TB, pod *corev1.Pod) string {
	t.Helper()
	if len(pod.Status.ContainerStatuses) == 0 {
		t.Fatalf("pod %s has no container status", pod.Name)
	}
	_, id, ok := strings.Cut(pod.Status.ContainerStatuses[0].ContainerID, "://")
	if !ok {
		t.Fatalf("pod %s: container ID %q", pod.Name, pod.Status.ContainerStatuses[0].ContainerID)
	}
	pid, err := n.Runtime.TaskPID(id)
	if err != nil {
		t.Fatalf("pod %s: %v", pod.Name, err)
	}
	return "/proc/" + strconv.Itoa(pid) + "/ns/net"
}

// drain deletes every Deployment, ReplicaSet and pod, then every DaemonSet
// and its pods (as a node is drained: the node's own agents, its network
// among them, go last, once the pods that need them are gone), waits until
// they are gone and containerd runs no task, then stops kubelet.
func (n *Node) drain(t *testing.T) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs := n.c.Client
	grace := int64(1)
	del := metav1.DeleteOptions{GracePeriodSeconds: &grace}
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Errorf("drain node %s: %v", n.Name, err)
	}
	// daemon says whether a pod belongs to a DaemonSet.
	daemon := func(p corev1.Pod) bool {
		for _, o := range p.OwnerReferences {
			if o.Kind == "DaemonSet" {
				return true
			}
		}
		return false
	}
	for _, ns := range nss.Items {
		for _, err := range []error{
			cs.AppsV1().Deployments(ns.Name).DeleteCollection(ctx, del, metav1.ListOptions{}),
			cs.AppsV1().ReplicaSets(ns.Name).DeleteCollection(ctx, del, metav1.ListOptions{}),
		} {
			if err != nil {
				t.Errorf("drain node %s: %v", n.Name, err)
			}
		}
		pods, err := cs.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Errorf("drain node %s: %v", n.Name, err)
			continue
		}
		for _, p := range pods.Items {
			if !daemon(p) {
				if err := cs.CoreV1().Pods(ns.Name).Delete(ctx, p.Name, del); err != nil && !apierrors.IsNotFound(err) {
					t.Errorf("drain node %s: %v", n.Name, err)
				}
			}
		}
	}
	n.waitPodsGone(t, ctx, func(p corev1.Pod) bool { return !daemon(p) })
	for _, ns := range nss.Items {
		if err := cs.AppsV1().DaemonSets(ns.Name).DeleteCollection(ctx, del, metav1.ListOptions{}); err != nil {
			t.Errorf("drain node %s: %v", n.Name, err)
		}
		if err := cs.CoreV1().Pods(ns.Name).DeleteCollection(ctx, del, metav1.ListOptions{}); err != nil {
			t.Errorf("drain node %s: %v", n.Name, err)
		}
	}
	n.waitPodsGone(t, ctx, func(corev1.Pod) bool { return true })
	n.Runtime.WaitNoTasks(t, 30*time.Second)
	n.c.StopProcess(t, "kubelet")
	t.Logf("node %s drained and kubelet stopped in %v", n.Name, time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		t.Logf("kubelet log (tail):\n%s", n.c.LogTail("kubelet", 6000))
	}
}

// waitPodsGone waits until no pod that counts is left, until ctx ends.
func (n *Node) waitPodsGone(t *testing.T, ctx context.Context, counts func(corev1.Pod) bool) {
	var left []string
	for ctx.Err() == nil {
		left = left[:0]
		pods, err := n.c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			left = append(left, err.Error())
		} else {
			for _, p := range pods.Items {
				if counts(p) {
					left = append(left, p.Namespace+"/"+p.Name)
				}
			}
		}
		if len(left) == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("pods still there a minute after deletion: %v", left)
}
