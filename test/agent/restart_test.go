package agent_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
)

// echoServer answers every line on every connection with the line and the
// pod's name, until the listener closes.
func echoServer(t *testing.T, p *sim.Pod, port int) {
	t.Helper()
	var ln net.Listener
	if err := p.Do(func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, p.Name+" "+line); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// traffic keeps one long connection busy and opens new ones in a loop, from
// a client pod to addr, counting failures, until stopped.
type traffic struct {
	ok, failed, longRounds atomic.Int64
	longErr                atomic.Value
	stop                   chan struct{}
	wg                     sync.WaitGroup
}

func startTraffic(t *testing.T, client *sim.Pod, addr string) *traffic {
	t.Helper()
	tr := &traffic{stop: make(chan struct{})}
	var long net.Conn
	if err := client.Do(func() (err error) {
		long, err = net.DialTimeout("tcp4", addr, 2*time.Second)
		return err
	}); err != nil {
		t.Fatalf("long connection: %v", err)
	}
	tr.wg.Add(2)
	go func() {
		defer tr.wg.Done()
		defer long.Close()
		r := bufio.NewReader(long)
		for {
			select {
			case <-tr.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			long.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := io.WriteString(long, "ping\n"); err != nil {
				tr.longErr.Store(err)
				return
			}
			if _, err := r.ReadString('\n'); err != nil {
				tr.longErr.Store(err)
				return
			}
			tr.longRounds.Add(1)
		}
	}()
	go func() {
		defer tr.wg.Done()
		for {
			select {
			case <-tr.stop:
				return
			default:
			}
			err := client.Do(func() error {
				c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := io.WriteString(c, "hello\n"); err != nil {
					return err
				}
				_, err = bufio.NewReader(c).ReadString('\n')
				return err
			})
			if err != nil {
				tr.failed.Add(1)
				t.Logf("new connection failed: %v", err)
			} else {
				tr.ok.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return tr
}

func (tr *traffic) finish() {
	close(tr.stop)
	tr.wg.Wait()
}

// buildUpgrade builds podpath again as another version: a different
// binary, as a rolling upgrade of the DaemonSet would bring.
func buildUpgrade(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "podpath-next")
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version=next", "-o", bin, "github.com/podpath/podpath/cmd/podpath")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the upgrade: %v\n%s", err, out)
	}
	return bin
}

func TestRestartAndUpgradeKeepTraffic(t *testing.T) {
	e := newEnv(t)
	upgrade := buildUpgrade(t)
	ctx := context.Background()
	var backends []*sim.Pod
	for i := range 3 {
		p, err := e.node.AddPod(ctx, fmt.Sprintf("web-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, p, 8080)
		backends = append(backends, p)
	}
	client, err := e.node.AddPod(ctx, "client")
	if err != nil {
		t.Fatal(err)
	}
	e.startAgent(t, e.bin)
	s := e.createService(t, newService("web", nil))
	eps := func(pods ...*sim.Pod) []discoveryv1.Endpoint {
		var out []discoveryv1.Endpoint
		for _, p := range pods {
			out = append(out, endpoint(p.IP.String(), true, true, false, nodeName))
		}
		return out
	}
	httpPort := []discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)}
	e.slice(t, "web", "web-a", httpPort, eps(backends[0], backends[1])...)
	want := func(pods ...*sim.Pod) map[string]frontend {
		var a []string
		for _, p := range pods {
			a = append(a, netip.AddrPortFrom(p.IP, 8080).String())
		}
		return map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe(a...)}
	}
	e.waitServiceFrontends(t, s, want(backends[0], backends[1]))

	tr := startTraffic(t, client, s.Spec.ClusterIP+":80")
	pause := func() { time.Sleep(500 * time.Millisecond) }
	pause()

	// SIGKILL: nothing is cleaned up, the datapath keeps serving alone.
	e.agent.signal(syscall.SIGKILL)
	pause()
	// A change while no agent runs: the next one must catch up.
	e.slice(t, "web", "web-a", httpPort, eps(backends...)...)
	pause()
	e.startAgent(t, e.bin)
	e.waitServiceFrontends(t, s, want(backends...))
	pause()

	// Upgrade: SIGTERM, then a different binary takes over.
	e.agent.signal(syscall.SIGTERM)
	pause()
	e.startAgent(t, upgrade)
	// A rollout under the new agent: web-0 terminates (still serving), so
	// it takes no new connections but keeps the ones it has.
	e.slice(t, "web", "web-a", httpPort, append(eps(backends[1], backends[2]),
		endpoint(backends[0].IP.String(), false, true, true, nodeName))...)
	e.waitServiceFrontends(t, s, want(backends[1], backends[2]))
	pause()
	tr.finish()

	if err := tr.longErr.Load(); err != nil {
		t.Errorf("the long connection broke: %v", err)
	}
	if tr.failed.Load() != 0 {
		t.Errorf("%d of %d new connections failed across kill, restart and upgrade", tr.failed.Load(), tr.failed.Load()+tr.ok.Load())
	}
	if tr.ok.Load() < 50 || tr.longRounds.Load() < 50 {
		t.Errorf("too little traffic to tell: %d connections, %d rounds on the long one", tr.ok.Load(), tr.longRounds.Load())
	}
	t.Logf("%d new connections, 0 failed; %d round trips on the long connection", tr.ok.Load(), tr.longRounds.Load())

	// The datapath's counters are exported, and closed flows' conntrack
	// entries (10 s after FIN) are reaped without anyone running a command.
	if v := e.metricSum(t, "podpath_datapath_packets_total", `hook="from_pod"`); v < float64(tr.ok.Load()) {
		t.Errorf("from_pod counted %v packets for %d connections", v, tr.ok.Load())
	}
	// Drop events: the limit the node runs with, and every result counted.
	if v := e.metric(t, "podpath_drop_event_rate"); v != maps.DefaultDropEventRate {
		t.Errorf("podpath_drop_event_rate %v, want the default %d", v, maps.DefaultDropEventRate)
	}
	for _, r := range []string{"sent", "rate_limited", "ringbuf_full"} {
		if v := e.metric(t, `podpath_drop_events_total{result="`+r+`"}`); v < 0 {
			t.Errorf("no podpath_drop_events_total{result=%q} in /metrics", r)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for e.metric(t, `podpath_reaped_entries_total{table="conntrack"}`) <= 0 {
		if time.Now().After(deadline) {
			t.Fatal("no conntrack entry reaped 20 s after the connections closed")
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func TestDriftRepaired(t *testing.T) {
	e := newEnv(t)
	e.startAgent(t, e.bin, "--sync-period", "1s")
	s := e.createService(t, newService("drift", nil))
	e.slice(t, "drift", "drift-a", []discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)}, ready("10.244.20.1"))
	want := map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe("10.244.20.1:8080")}
	e.waitServiceFrontends(t, s, want)

	// Someone deletes the frontend by hand (bpftool map delete ...).
	m, err := maps.OpenPinned(e.node.PinRoot, maps.MapServices)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	k := maps.SvcKey{Addr: maps.Addr16(netip.MustParseAddr(s.Spec.ClusterIP)), Port: maps.Port(80), Proto: 6, Family: maps.FamilyIPv4, Scope: uint8(maps.ScopeInternal)}
	if err := m.Delete(&k); err != nil {
		t.Fatalf("delete the frontend by hand: %v", err)
	}
	if len(e.frontendsOf(t, s)) != 0 {
		t.Fatal("the frontend is still there after deleting it")
	}
	// The next full resync puts it back.
	e.waitServiceFrontends(t, s, want)
}

func TestAPIServerGoesAway(t *testing.T) {
	e := newEnv(t)
	e.startAgent(t, e.bin)
	s := e.createService(t, newService("steady", nil))
	httpPort := []discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)}
	e.slice(t, "steady", "steady-a", httpPort, ready("10.244.21.1"))
	want := map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe("10.244.21.1:8080")}
	e.waitServiceFrontends(t, s, want)
	// A stopping API server empties its own Service's endpoints (its
	// lease reconciler): kube-proxy follows that too. Every other
	// frontend must stay as it is while the API is away.
	withoutAPI := func() map[string]frontend {
		m := e.programmed(t)
		for k := range m {
			if strings.HasPrefix(k, "10.96.0.1:") {
				delete(m, k)
			}
		}
		return m
	}
	before := withoutAPI()

	e.cluster.StopAPIServer(t)
	for range 30 {
		time.Sleep(100 * time.Millisecond)
		if got := withoutAPI(); !equalFrontends(got, before) {
			t.Fatalf("the maps changed while the API server was away:\n%s", dump(got))
		}
	}
	e.cluster.StartAPIServer(t)
	// The agent catches up with a change made after the API came back.
	e.slice(t, "steady", "steady-a", httpPort, ready("10.244.21.1"), ready("10.244.21.2"))
	e.waitServiceFrontends(t, s, map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe("10.244.21.1:8080", "10.244.21.2:8080")})
	code, body, err := e.get("http://127.0.0.1:10256/healthz")
	if err != nil || code != http.StatusOK {
		t.Fatalf("healthz after the API came back: %d %s %v", code, body, err)
	}
}

// TestKubernetesServiceFromPod: the API server's own Service (an endpoint
// on the node's address, written by the API server's endpoint reconciler)
// reached from a pod by its cluster IP, as every in-cluster client does.
func TestKubernetesServiceFromPod(t *testing.T) {
	e := newEnv(t)
	e.startAgent(t, e.bin)
	ctx := context.Background()
	pod, err := e.node.AddPod(ctx, "api-client")
	if err != nil {
		t.Fatal(err)
	}
	ks, err := e.client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.waitServiceFrontends(t, ks, map[string]frontend{ks.Spec.ClusterIP + ":443/TCP internal": fe(netip.AddrPortFrom(nodeAddr.Addr(), 6443).String())})

	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(e.cluster.Dir, "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(filepath.Join(e.cluster.Dir, "pki", "admin.crt"), filepath.Join(e.cluster.Dir, "pki", "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "kubernetes.default.svc"},
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = pod.Do(func() error {
				var d net.Dialer
				conn, err = d.DialContext(ctx, "tcp4", addr)
				return err
			})
			return conn, err
		},
	}}
	resp, err := hc.Get("https://" + net.JoinHostPort(ks.Spec.ClusterIP, "443") + "/version")
	if err != nil {
		t.Fatalf("a pod reaching the API server through the kubernetes Service: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /version: %s %s", resp.Status, body)
	}
	t.Logf("from pod %s: GET https://%s/version: %s", pod.IP, ks.Spec.ClusterIP, body)
}

// TestHostPortKeepsItsPort: a NodePort that a pod's hostPort already holds
// is refused with a reason; the hostPort and every other Service stay.
func TestHostPortKeepsItsPort(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	hp, err := e.node.AddPod(ctx, "hp", sim.WithPortMappings(sim.PortMapping{HostPort: 30090, ContainerPort: 80, Protocol: "tcp"}))
	if err != nil {
		t.Fatal(err)
	}
	e.startAgent(t, e.bin)
	httpPort := []discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)}
	clash := e.createService(t, newService("clash", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30090
	}))
	e.slice(t, "clash", "clash-a", httpPort, ready("10.244.22.1"))
	fine := e.createService(t, newService("fine", nil))
	e.slice(t, "fine", "fine-a", httpPort, ready("10.244.22.2"))
	e.waitServiceFrontends(t, fine, map[string]frontend{fine.Spec.ClusterIP + ":80/TCP internal": fe("10.244.22.2:8080")})
	eventually(t, "conflict reported", func() (bool, string) {
		v := e.metric(t, `podpath_services_skipped{reason="conflict"}`)
		return v == 1, fmt.Sprint(v)
	})
	got := e.programmed(t)
	if f, ok := got[clash.Spec.ClusterIP+":80/TCP internal"]; ok {
		t.Fatalf("the clashing Service was programmed: %s", dump(f))
	}
	for _, scope := range []string{"internal", "external"} {
		f := got["0.0.0.0:30090/TCP "+scope]
		if !slices.Equal(f.Active, []string{netip.AddrPortFrom(hp.IP, 80).String()}) {
			t.Fatalf("the hostPort's %s frontend is not the pod's: %s", scope, dump(got))
		}
	}
}

// TestNodeResetUndoesTheAgent: after the agent (as a deleted DaemonSet's
// pod would), `podpath node reset` leaves the node as it was: no program
// attached, no pin, no CNI file the agent installed.
func TestNodeResetUndoesTheAgent(t *testing.T) {
	e := newEnv(t)
	e.startAgent(t, e.bin)
	e.checkCNIInstalled(t)
	e.agent.signal(syscall.SIGTERM)
	out, err := exec.Command("nsenter", "--net="+e.node.NS.Path(), "--", e.bin,
		"--pin-root", e.node.PinRoot, "--state-dir", e.node.StateDir, "node", "reset").CombinedOutput()
	if err != nil {
		t.Fatalf("node reset: %v\n%s", err, out)
	}
	for _, f := range []string{
		filepath.Join(e.dir, "cni-bin", "podpath-cni"),
		filepath.Join(e.dir, "cni-conf", "10-podpath.conflist"),
		e.node.PinRoot,
	} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there after node reset (%v)", f, err)
		}
	}
	err = e.node.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
				return fmt.Errorf("XDP still attached to %s", l.Attrs().Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
