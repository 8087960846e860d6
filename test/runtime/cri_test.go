package runtimetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/ctrtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criTimeout bounds every CRI call.
const criTimeout = 30 * time.Second

// criClient speaks the CRI to a runtime, as kubelet (or crictl) does.
type criClient struct {
	rt     runtimeapi.RuntimeServiceClient
	images runtimeapi.ImageServiceClient
	logDir string
}

// dialCRI connects to the runtime's socket and waits until it reports the
// runtime and its network ready (the CNI configuration was loaded).
func dialCRI(t *testing.T, cd *ctrtest.Containerd) *criClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+cd.Sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", cd.Sock, err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &criClient{
		rt:     runtimeapi.NewRuntimeServiceClient(conn),
		images: runtimeapi.NewImageServiceClient(conn),
		logDir: filepath.Join(cd.Dir, "pod-logs"),
	}
	// containerd loads its plugins before the CRI answers: a few seconds
	// here, over 20 under the test VMs' emulated CPU on a slow host.
	var last string
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		select {
		case <-cd.Exited:
			t.Fatalf("containerd exited during start-up:\n%s", ctrtest.Tail(cd.Log, 30))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := c.rt.Status(ctx, &runtimeapi.StatusRequest{})
		cancel()
		if err != nil {
			last = err.Error()
			continue
		}
		ready := 0
		for _, cond := range st.GetStatus().GetConditions() {
			if cond.Status && (cond.Type == runtimeapi.RuntimeReady || cond.Type == runtimeapi.NetworkReady) {
				ready++
			}
		}
		if ready == 2 {
			return c
		}
		last = fmt.Sprint(st.GetStatus().GetConditions())
	}
	t.Fatalf("containerd not ready after 60s: %s\n%s", last, ctrtest.Tail(cd.Log, 30))
	return nil
}

func criContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), criTimeout)
}

// waitImage waits until the CRI sees an image imported through ctr; the
// CRI's image cache follows containerd's store asynchronously.
func (c *criClient) waitImage(t testing.TB, ref string) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := criContext()
		st, err := c.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		cancel()
		if err == nil && st.GetImage() != nil {
			return
		}
	}
	t.Fatalf("image %s not visible through the CRI after import", ref)
}

// pod is a running pod sandbox as the CRI reports it.
type pod struct {
	name   string
	id     string
	config *runtimeapi.PodSandboxConfig
	ip     netip.Addr
	pid    int // the sandbox's pause process
}

// netns is a path to the pod's network namespace valid while it runs. The
// runtime's own bind mount lives in its private mount namespace.
func (p *pod) netns() string { return fmt.Sprintf("/proc/%d/ns/net", p.pid) }

// runPod is `crictl runp`: RunPodSandbox, then PodSandboxStatus for the IP
// and the pause PID. The pod is stopped and removed at the end of the test
// if it is still there.
func (c *criClient) runPod(t *testing.T, name, cgroupParent string) *pod {
	t.Helper()
	p := &pod{name: name, config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name:      name,
			Namespace: "podpath-rt",
			Uid:       fmt.Sprintf("%s-%d", name, os.Getpid()),
		},
		Hostname:     name,
		LogDirectory: filepath.Join(c.logDir, name),
		Labels:       map[string]string{"app": name},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: cgroupParent},
	}}
	ctx, cancel := criContext()
	defer cancel()
	start := time.Now()
	resp, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: p.config})
	if err != nil {
		t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	took := time.Since(start)
	p.id = resp.PodSandboxId
	t.Cleanup(func() { c.cleanupPod(t, p) })

	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus %s: %v", name, err)
	}
	if st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod %s is %v, want ready", name, st.GetStatus().GetState())
	}
	if p.ip, err = netip.ParseAddr(st.GetStatus().GetNetwork().GetIp()); err != nil {
		t.Fatalf("pod %s has no IP in its status: %v", name, err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info.Pid == 0 {
		t.Fatalf("pod %s: no sandbox pid in the verbose status (%v): %s", name, err, st.GetInfo()["info"])
	}
	p.pid = info.Pid
	t.Logf("RunPodSandbox %s: %v: sandbox %.12s, IP %s, pause pid %d",
		name, took.Round(time.Millisecond), p.id, p.ip, p.pid)
	return p
}

// stopPod is StopPodSandbox: the runtime stops the pod's processes and
// calls the plugin's DEL with the netns still there.
func (c *criClient) stopPod(t testing.TB, p *pod) {
	t.Helper()
	ctx, cancel := criContext()
	defer cancel()
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("StopPodSandbox %s: %v", p.name, err)
	}
}

// removePod is RemovePodSandbox, which kubelet sends after the stop: the
// runtime calls DEL once more, now without a netns.
func (c *criClient) removePod(t testing.TB, p *pod) {
	t.Helper()
	ctx, cancel := criContext()
	defer cancel()
	if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("RemovePodSandbox %s: %v", p.name, err)
	}
}

// cleanupPod stops and removes a pod, tolerating one that is already gone.
func (c *criClient) cleanupPod(t testing.TB, p *pod) {
	ctx, cancel := criContext()
	defer cancel()
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil && status.Code(err) != codes.NotFound {
		t.Errorf("StopPodSandbox %s: %v", p.name, err)
	}
	if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil && status.Code(err) != codes.NotFound {
		t.Errorf("RemovePodSandbox %s: %v", p.name, err)
	}
}

// runContainer creates and starts a busybox container in a pod running
// `sh -c script`, and returns its ID.
func (c *criClient) runContainer(t testing.TB, p *pod, name, script string) string {
	t.Helper()
	ctx, cancel := criContext()
	defer cancel()
	created, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.id,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: ctrtest.BusyboxImage},
			Command:  []string{"sh", "-c", script},
			LogPath:  name + ".log",
			Linux:    &runtimeapi.LinuxContainerConfig{},
		},
		SandboxConfig: p.config,
	})
	if err != nil {
		t.Fatalf("CreateContainer %s in %s: %v", name, p.name, err)
	}
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		t.Fatalf("StartContainer %s in %s: %v", name, p.name, err)
	}
	return created.ContainerId
}

// waitExit waits for a container to exit and returns its exit code and
// what it wrote, read from the CRI log file ("<time> stdout F <line>").
func (c *criClient) waitExit(t testing.TB, p *pod, id, name string, timeout time.Duration) (int32, string) {
	t.Helper()
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := criContext()
		st, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		cancel()
		if err != nil {
			t.Fatalf("ContainerStatus %s: %v", name, err)
		}
		if st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(p.config.LogDirectory, name+".log"))
		if err != nil {
			t.Fatalf("log of %s: %v", name, err)
		}
		var out strings.Builder
		for _, line := range strings.Split(strings.TrimRight(string(raw), "\n"), "\n") {
			if f := strings.SplitN(line, " ", 4); len(f) == 4 {
				out.WriteString(f[3] + "\n")
			}
		}
		return st.GetStatus().GetExitCode(), out.String()
	}
	t.Fatalf("container %s in %s still running after %v", name, p.name, timeout)
	return 0, ""
}

// sandboxes lists the pods the runtime knows.
func (c *criClient) sandboxes(t testing.TB) []*runtimeapi.PodSandbox {
	t.Helper()
	ctx, cancel := criContext()
	defer cancel()
	resp, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatalf("ListPodSandbox: %v", err)
	}
	return resp.Items
}
