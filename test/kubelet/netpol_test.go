package kubelet_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// networkPolicy: a NetworkPolicy lets only pods labelled role=frontend
// reach the web pods, on their named port: the client pod (unlabelled) is
// refused through the ClusterIP and at the pods' own addresses, while
// kubelet's readiness probes (from the node) keep every web pod Ready;
// labelled frontend, the client is let in; a web pod started while the
// policy exists is Ready and closed to the unlabelled client from its
// first packet; the policy deleted, everything is open again.
func (e *env) networkPolicy(t *testing.T, web *appsv1.Deployment, client *corev1.Pod, clientNS, clusterIP string) {
	t.Helper()
	ctx := context.Background()
	cs := e.cluster.Client
	start := time.Now()
	http := intstr.FromString("http")
	tcp := corev1.ProtocolTCP
	np, err := cs.NetworkingV1().NetworkPolicies(namespace).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "frontend"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &http}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	refused := func(addr string) bool {
		_, err := fetch(clientNS, addr, time.Second)
		return err != nil
	}
	waitFor(t, "7. the policy to refuse the client pod at the ClusterIP", 10*time.Second, func() (bool, string) {
		return refused(clusterIP), "still answered"
	})
	enforced := time.Since(start)
	pods := e.waitRollout(t, web, 2)
	for _, p := range pods {
		addr := net.JoinHostPort(p.Status.PodIP, "8080")
		if !refused(addr) {
			t.Fatalf("7. client pod -> web pod %s at %s: answered, the policy allows only role=frontend", p.Name, addr)
		}
	}
	// kubelet probes every second and gives up after one failure: pods
	// that stay Ready for 3 s are probed through the policy.
	time.Sleep(3 * time.Second)
	e.waitRollout(t, web, 2)
	t.Logf("7. NetworkPolicy web (from role=frontend, port http): the client pod refused after %v, at the ClusterIP and both pods; kubelet's probes keep both Ready",
		enforced.Round(time.Millisecond))

	// The client labelled frontend is let in.
	patch := []byte(`{"metadata":{"labels":{"role":"frontend"}}}`)
	if _, err := cs.CoreV1().Pods(namespace).Patch(ctx, client.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitFor(t, "7. the relabelled client pod to be let in", 10*time.Second, func() (bool, string) {
		return !refused(clusterIP), "still refused"
	})
	t.Logf("7. client pod labelled role=frontend: let in after %v", time.Since(start).Round(time.Millisecond))

	// A web pod started under the policy: Ready, open to the frontend,
	// closed to the unlabelled from its first packet.
	e.scale(t, 3)
	pods = e.waitRollout(t, web, 3)
	for _, p := range pods {
		addr := net.JoinHostPort(p.Status.PodIP, "8080")
		if refused(addr) {
			t.Fatalf("7. frontend client pod -> web pod %s at %s: refused", p.Name, addr)
		}
	}
	unlabel := []byte(`{"metadata":{"labels":{"role":null}}}`)
	if _, err := cs.CoreV1().Pods(namespace).Patch(ctx, client.Name, types.StrategicMergePatchType, unlabel, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "7. the client pod, unlabelled again, refused at every web pod", 10*time.Second, func() (bool, string) {
		for _, p := range pods {
			if addr := net.JoinHostPort(p.Status.PodIP, "8080"); !refused(addr) {
				return false, fmt.Sprintf("%s answered", addr)
			}
		}
		return true, ""
	})
	t.Logf("7. scaled to 3 under the policy: the new pod Ready, open to the frontend, closed to the client unlabelled again")

	if err := cs.NetworkingV1().NetworkPolicies(namespace).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitFor(t, "7. the policy deleted, the client pod answered", 10*time.Second, func() (bool, string) {
		return !refused(clusterIP), "still refused"
	})
	t.Logf("7. policy deleted: the client pod answered again after %v", time.Since(start).Round(time.Millisecond))
	e.scale(t, 2)
	e.waitRollout(t, web, 2)
}
