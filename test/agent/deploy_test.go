package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/podpath/podpath/internal/kubetest"
	"github.com/podpath/podpath/internal/sim"
)

// TestDeployManifest: deploy/podpath.yaml is accepted by a real API server,
// and its ServiceAccount may read what the agent reads and nothing more.
func TestDeployManifest(t *testing.T) {
	requireRoot(t)
	netns, err := sim.NewNetNS("deploy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.RemoveNetNS(netns) })
	c := kubetest.Start(t, netns, netip.MustParseAddr("127.0.0.1"), kubetest.Options{})
	ctx := context.Background()

	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "podpath.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var kinds []string
	for {
		var raw runtime.RawExtension
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(raw.Raw)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(raw.Raw, nil, nil)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			_, err = c.Client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = c.Client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = c.Client.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *appsv1.DaemonSet:
			if o.Spec.Template.Spec.PriorityClassName != "system-node-critical" || !o.Spec.Template.Spec.HostNetwork {
				t.Errorf("DaemonSet: want hostNetwork and system-node-critical")
			}
			_, err = c.Client.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("unexpected object %T", obj)
		}
		if err != nil {
			t.Fatalf("create %T: %v", obj, err)
		}
		kinds = append(kinds, obj.GetObjectKind().GroupVersionKind().Kind)
	}
	if len(kinds) != 4 {
		t.Fatalf("want ServiceAccount, ClusterRole, ClusterRoleBinding and DaemonSet, got %v", kinds)
	}

	sa := "system:serviceaccount:kube-system:podpath"
	for _, a := range []struct {
		group, resource, verb string
		allowed               bool
	}{
		{"", "services", "watch", true},
		{"", "nodes", "get", true},
		{"discovery.k8s.io", "endpointslices", "list", true},
		{"", "pods", "list", true},
		{"", "namespaces", "watch", true},
		{"networking.k8s.io", "networkpolicies", "list", true},
		{"", "services", "create", false},
		{"", "secrets", "get", false},
		{"", "pods", "delete", false},
		{"networking.k8s.io", "networkpolicies", "create", false},
	} {
		r, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
			Spec: authzv1.SubjectAccessReviewSpec{User: sa, ResourceAttributes: &authzv1.ResourceAttributes{
				Group: a.group, Resource: a.resource, Verb: a.verb,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != a.allowed {
			t.Errorf("%s %s %s: allowed %v, want %v", a.verb, a.group, a.resource, r.Status.Allowed, a.allowed)
		}
	}
}
