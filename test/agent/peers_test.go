package agent_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// createNode registers a Node as kubelet and kube-controller-manager would
// leave it: its pod CIDR in the spec, its InternalIP in the status.
func createNode(t *testing.T, client kubernetes.Interface, name string, podCIDR netip.Prefix, ip netip.Addr) {
	t.Helper()
	ctx := context.Background()
	n, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{PodCIDR: podCIDR.String(), PodCIDRs: []string{podCIDR.String()}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// peerPrefixes reads a node's peers map: the prefixes it holds.
func peerPrefixes(t *testing.T, n *sim.Node) map[netip.Prefix]bool {
	t.Helper()
	m, err := maps.OpenPinned(n.PinRoot, maps.MapPeers)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	entries, err := maps.Entries[maps.PeerKey, maps.Peer](m)
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Prefix]bool{}
	for k := range entries {
		out[k.Prefix()] = true
	}
	return out
}

// Two nodes, each with its agent following one API server, in both routing
// modes: each agent makes the other Node a peer from its InternalIP and
// spec.podCIDRs, so a pod on one node reaches a pod on the other; when a
// Node object is deleted, the other node forgets it (map entries and
// route) within a second, and its pods are unreachable; created again, it
// is a peer again.
func TestAgentsJoinNodes(t *testing.T) {
	for _, mode := range []string{loader.RoutingDirect, loader.RoutingVXLAN} {
		t.Run(mode, func(t *testing.T) { testAgentsJoinNodes(t, mode) })
	}
}

func testAgentsJoinNodes(t *testing.T, mode string) {
	tn := newTwoNodes(t, "ap", 231, mode)
	nodes, cluster := tn.nodes, tn.cluster
	isPeer := func(of, n *sim.Node) bool { return peerPrefixes(t, of)[n.PodCIDR] }
	waitFor := func(what string, limit time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > limit {
				t.Fatalf("%s: not within %s", what, limit)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(start)
	}
	waitFor("each node the other's peer", 60*time.Second, func() bool {
		return isPeer(nodes[0], nodes[1]) && isPeer(nodes[1], nodes[0])
	})

	var pods []*sim.Pod
	for _, n := range nodes {
		p, err := n.AddPod(context.Background(), "p")
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	if _, err := sim.TCPEcho(pods[0], pods[1], []byte("through the agents' peers")); err != nil {
		t.Fatalf("pod on %s -> pod on %s: %v", nodes[0].Name, nodes[1].Name, err)
	}
	if _, err := sim.TCPEcho(pods[1], pods[0], []byte("and back")); err != nil {
		t.Fatalf("pod on %s -> pod on %s: %v", nodes[1].Name, nodes[0].Name, err)
	}

	ctx := context.Background()
	if err := cluster.Client.CoreV1().Nodes().Delete(ctx, nodes[1].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The map is written before the routes: both must be gone in time.
	routesLeft := func() string {
		var out string
		if err := nodes[0].Do(func() (err error) {
			out, err = routesOfProto(112)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	took := waitFor("the deleted Node forgotten, entries and routes", time.Second, func() bool {
		return len(peerPrefixes(t, nodes[0])) == 0 && routesLeft() == ""
	})
	t.Logf("%s: the deleted Node's peers entries and route were gone after %s", mode, took.Round(time.Millisecond))
	if _, err := sim.TCPEcho(pods[0], pods[1], []byte("gone")); err == nil {
		t.Errorf("pod on the deleted Node still reached")
	}

	createNode(t, cluster.Client, nodes[1].Name, nodes[1].PodCIDR, nodes[1].Address)
	waitFor("the Node a peer again", 5*time.Second, func() bool { return isPeer(nodes[0], nodes[1]) })
	if _, err := sim.TCPEcho(pods[0], pods[1], []byte("back again")); err != nil {
		t.Errorf("pod on the re-created Node: %v", err)
	}
}

// routesOfProto lists, in the current namespace, the IPv4 routes of a
// routing protocol, one per line.
func routesOfProto(proto netlink.RouteProtocol) (string, error) {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: proto}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return "", err
	}
	var out []string
	for _, r := range rs {
		out = append(out, r.String())
	}
	return strings.Join(out, "\n"), nil
}
