package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podpath/podpath/internal/sim"
	pmaps "github.com/podpath/podpath/maps"
)

// kubePod starts a pod as kubelet does: the Pod object exists (on this
// node, no address yet), the runtime's CNI ADD connects it, then its status
// gets the address. It returns the pod and how long ADD took.
func (e *env) kubePod(t *testing.T, ns, name string, lbls map[string]string, ports ...corev1.ContainerPort) (*sim.Pod, time.Duration) {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "pause", Ports: ports}}},
	}
	pod, err := e.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p, err := e.node.AddPod(ctx, name, sim.WithNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = p.IP.String()
	pod.Status.PodIPs = []corev1.PodIP{{IP: p.IP.String()}}
	if _, err := e.client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return p, took
}

func (e *env) namespace(t *testing.T, name string, lbls map[string]string) {
	t.Helper()
	_, err := e.client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// What kube-controller-manager would create, for pods to be admitted.
	_, err = e.client.CoreV1().ServiceAccounts(name).Create(context.Background(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// reaches says whether from opens a TCP connection to to's port, where a
// server answers.
func reaches(from, to *sim.Pod, port uint16) bool {
	_, err := sim.FetchTCP(from.Do, netip.AddrPortFrom(to.IP, port).String(), 700*time.Millisecond)
	return err == nil
}

// policyMaps is the policy map's keys and the ipcache, as pinned.
func (e *env) policyMaps(t *testing.T) (map[pmaps.PolicyKey]uint64, map[netip.Prefix]uint32) {
	t.Helper()
	pol, err := pmaps.OpenPolicy(e.node.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer pol.Close()
	keys, err := pol.Keys()
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pol.Identities()
	if err != nil {
		t.Fatal(err)
	}
	return keys, ids
}

// NetworkPolicies through a real API server: the agent gives every pod an
// identity and the selected pod its rules, so real TCP follows the policy
// (podSelector, namespaceSelector, a named port); the policy deleted, the
// pod is open again. Killed and restarted, the agent neither empties nor
// changes a policy map, and traffic stays enforced throughout.
func TestNetworkPolicy(t *testing.T) {
	e := newEnv(t)
	e.startAgent(t, e.bin, "--sync-period", "2s")
	ctx := context.Background()
	e.namespace(t, "shop", map[string]string{"team": "shop"})
	e.namespace(t, "ops", map[string]string{"team": "ops"})

	web, _ := e.kubePod(t, "shop", "web", map[string]string{"app": "web"})
	db, _ := e.kubePod(t, "shop", "db", map[string]string{"app": "db"}, corev1.ContainerPort{Name: "pg", ContainerPort: 7400, Protocol: corev1.ProtocolTCP})
	batch, _ := e.kubePod(t, "shop", "batch", map[string]string{"app": "batch"})
	prom, _ := e.kubePod(t, "ops", "prom", map[string]string{"app": "prom"})
	for _, port := range []int{7400, 7401, 9187} {
		serveOn(t, db, port)
	}
	eventually(t, "every pod has an identity", func() (bool, string) {
		_, ids := e.policyMaps(t)
		for _, p := range []*sim.Pod{web, db, batch, prom} {
			if ids[netip.PrefixFrom(p.IP, 32)] < pmaps.IdentityFirstUser {
				return false, fmt.Sprint(ids)
			}
		}
		return true, ""
	})
	if !reaches(batch, db, 7400) {
		t.Fatal("before any policy, batch does not reach db")
	}

	tcp := corev1.ProtocolTCP
	pg, metrics := intstr.FromString("pg"), intstr.FromInt32(9187)
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &pg}}},
				{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "ops"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &metrics}}},
			},
		},
	}
	if _, err := e.client.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		for _, c := range []struct {
			from *sim.Pod
			port uint16
			want bool
		}{
			{web, 7400, true}, {web, 7401, false}, {batch, 7400, false}, {prom, 9187, true}, {prom, 7400, false},
		} {
			if got := reaches(c.from, db, c.port); got != c.want {
				t.Errorf("%s: %s -> db:%d: reached %v, want %v", when, c.from.Name, c.port, got, c.want)
			}
		}
	}
	eventually(t, "the policy enforced", func() (bool, string) {
		return !reaches(batch, db, 7400), "batch still reaches db"
	})
	check("with the policy")

	// podpath policy get: the resolved rules, peers by their labels.
	eventually(t, "podpath policy get names the peers", func() (bool, string) {
		var out []byte
		err := e.node.Do(func() error {
			var err error
			out, err = exec.Command(e.bin, "--pin-root", e.node.PinRoot, "--state-dir", e.node.StateDir,
				"policy", "get", "shop/db", "-o", "json").Output()
			return err
		})
		var got struct {
			Enforced string
			Ingress  []struct{ Peer, Protocol, Ports string }
		}
		if err == nil {
			err = json.Unmarshal(out, &got)
		}
		var rows []string
		for _, r := range got.Ingress {
			rows = append(rows, r.Peer+" "+r.Protocol+" "+r.Ports)
		}
		slices.Sort(rows)
		want := []string{"ops: app=prom TCP 9187", "shop: app=web TCP 7400"}
		return err == nil && got.Enforced == "ingress" && slices.Equal(rows, want), fmt.Sprintf("%v: %q\n%s", err, rows, out)
	})

	// Killed, the datapath keeps enforcing; restarted, the agent writes
	// nothing: the same identities, the same keys.
	keys, ids := e.policyMaps(t)
	e.agent.signal(syscall.SIGKILL)
	check("with the agent killed")
	e.startAgent(t, e.bin, "--sync-period", "2s")
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		k2, i2 := e.policyMaps(t)
		if !slices.Equal(slices.Sorted(maps.Keys(keysOnly(k2))), slices.Sorted(maps.Keys(keysOnly(keys)))) || !maps.Equal(i2, ids) {
			t.Fatalf("the restarted agent changed the policy maps:\nkeys %d -> %d\nidentities %v\n -> %v", len(keys), len(k2), ids, i2)
		}
		time.Sleep(100 * time.Millisecond)
	}
	check("after the restart")

	if err := e.client.NetworkingV1().NetworkPolicies("shop").Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the policy gone", func() (bool, string) {
		return reaches(batch, db, 7400), "batch still does not reach db"
	})
	if k, _ := e.policyMaps(t); len(k) != 0 {
		t.Errorf("%d policy keys left after the only policy was deleted", len(k))
	}
}

func keysOnly(m map[pmaps.PolicyKey]uint64) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[fmt.Sprintf("%+v", k)] = true
	}
	return out
}

// serveOn runs a TCP server on the pod's port for the rest of the test.
func serveOn(t *testing.T, p *sim.Pod, port int) {
	t.Helper()
	ln, err := sim.ServeTCP(p.Do, netip.AddrPortFrom(p.IP, uint16(port)).String(), func(net.Conn) string { return "ok" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

// A new pod is never briefly open: its CNI ADD starts it closed and
// returns once the agent has written its policy, so its very first packet
// meets it. A pod no policy selects is open as soon as its ADD returns, and
// one the API does not know (a runtime's own) after a second's grace.
func TestNewPodPolicyBeforeFirstPacket(t *testing.T) {
	e := newEnv(t)
	e.startAgent(t, e.bin)
	ctx := context.Background()
	e.namespace(t, "shop", nil)
	web, _ := e.kubePod(t, "shop", "web", map[string]string{"app": "web"})
	batch, _ := e.kubePod(t, "shop", "batch", map[string]string{"app": "batch"})
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(7500)
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	}
	if _, err := e.client.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the policy object reaches the agent

	for i := range 3 {
		db, took := e.kubePod(t, "shop", fmt.Sprintf("db-%d", i), map[string]string{"app": "db"})
		flags := e.endpointFlags(t, db)
		t.Logf("ADD of %s took %v; flags %d right after", db.Name, took, flags)
		if flags != pmaps.EndpointPolicyIngress {
			t.Errorf("%s right after ADD: flags %d, want ingress enforced (%d), not pending", db.Name, flags, pmaps.EndpointPolicyIngress)
		}
		serveOn(t, db, 7500)
		if reaches(batch, db, 7500) {
			t.Errorf("batch reached the new %s", db.Name)
		}
		if !reaches(web, db, 7500) {
			t.Errorf("web did not reach the new %s", db.Name)
		}
	}

	free, took := e.kubePod(t, "shop", "free", map[string]string{"app": "free"})
	if flags := e.endpointFlags(t, free); flags != 0 {
		t.Errorf("a pod no policy selects: flags %d after ADD (took %v)", flags, took)
	}
	serveOn(t, free, 7500)
	if !reaches(batch, free, 7500) {
		t.Error("a pod no policy selects is not reachable right after ADD")
	}

	start := time.Now()
	own, err := e.node.AddPod(ctx, "crictl-pod", sim.WithNamespace("shop"))
	if err != nil {
		t.Fatal(err)
	}
	if flags := e.endpointFlags(t, own); flags != 0 {
		t.Errorf("a pod the API does not know: flags %d after ADD (took %v)", flags, time.Since(start))
	}
	t.Logf("ADD of a pod the API does not know took %v", time.Since(start))
}

// endpointFlags reads a pod's endpoint flags.
func (e *env) endpointFlags(t *testing.T, p *sim.Pod) uint32 {
	t.Helper()
	eps, err := pmaps.OpenEndpoints(e.node.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer eps.Close()
	info, ok, err := eps.Lookup(p.IP)
	if err != nil || !ok {
		t.Fatalf("endpoint of %s: %v, %v", p.Name, ok, err)
	}
	return info.Flags
}
