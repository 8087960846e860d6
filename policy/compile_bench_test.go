package policy

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// A cluster of 10,000 pods with label sets of their own in 100 namespaces,
// and 1,000 policies selecting one local pod, each allowing a group of ten
// pods from any namespace (bench/ measures the same, end to end).
func BenchmarkCompile1000Policies(b *testing.B) {
	var pods []Pod
	var nss []Namespace
	for i := range 100 {
		nss = append(nss, Namespace{Name: fmt.Sprintf("ns-%d", i), Labels: map[string]string{"team": fmt.Sprintf("t%d", i)}})
	}
	pods = append(pods, Pod{Namespace: "bench", Name: "server", Labels: map[string]string{"app": "server"}, IP: netip.MustParseAddr("10.244.0.2"), Node: "n1"})
	for i := range 10000 {
		pods = append(pods, Pod{Namespace: fmt.Sprintf("ns-%d", i%100), Name: fmt.Sprintf("p%d", i),
			Labels: map[string]string{"group": fmt.Sprintf("g%d", i%1000), "pod": fmt.Sprintf("p%d", i)},
			IP:     netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)}), Node: "n2"})
	}
	tcp := corev1.ProtocolTCP
	var pols []*networkingv1.NetworkPolicy
	for i := range 1000 {
		port := intstr.FromInt32(int32(6000 + i))
		pols = append(pols, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("p%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{},
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"group": fmt.Sprintf("g%d", i)}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}}},
			},
		})
	}
	alloc := NewAllocator()
	b.ResetTimer()
	for range b.N {
		st := Compile("n1", pods, nss, pols, alloc)
		if n := len(st.Endpoints[pods[0].IP].Rules); n != 10000 {
			b.Fatalf("%d rules, want 10000", n)
		}
	}
}
