package agent

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testNode(name, ip string, cidrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeHostName, Address: name},
			{Type: corev1.NodeInternalIP, Address: ip},
		}
	}
	return n
}

// Every other Node with an IPv4 InternalIP and pod CIDR is a peer, by name;
// IPv6 CIDRs of dual-stack Nodes are left aside; a Node without address or
// CIDR yet, or whose CIDR overlaps this node's or an earlier peer's, is
// skipped with its reason, and the others stay peers.
func TestPeersOf(t *testing.T) {
	own := netip.MustParsePrefix("10.244.1.0/24")
	nodes := []*corev1.Node{
		testNode("c", "192.168.0.3", "10.244.3.0/24", "fd00:3::/64"),
		testNode("self", "192.168.0.1", "10.244.1.0/24"),
		testNode("a", "192.168.0.2", "10.244.2.0/24"),
		testNode("no-ip", "", "10.244.4.0/24"),
		testNode("no-cidr", "192.168.0.5"),
		testNode("overlaps-own", "192.168.0.6", "10.244.1.0/25"),
		testNode("overlaps-a", "192.168.0.7", "10.244.2.128/25"),
	}
	got, skipped := peersOf("self", own, nodes)
	var names []string
	for _, p := range got {
		names = append(names, p.Name+"="+p.Address.String())
		for _, c := range p.PodCIDRs {
			names[len(names)-1] += "," + c.String()
		}
	}
	if want := "a=192.168.0.2,10.244.2.0/24 c=192.168.0.3,10.244.3.0/24"; strings.Join(names, " ") != want {
		t.Errorf("peers %q, want %q", strings.Join(names, " "), want)
	}
	for name, want := range map[string]string{
		"no-ip": "InternalIP", "no-cidr": "pod CIDR", "overlaps-own": "overlaps this node", "overlaps-a": "overlaps peer a",
	} {
		if !strings.Contains(skipped[name], want) {
			t.Errorf("node %s skipped for %q, want it to say %q", name, skipped[name], want)
		}
	}
	if len(skipped) != 4 {
		t.Errorf("skipped %v, want 4 nodes", skipped)
	}
	if nodes[0].Name != "c" {
		t.Errorf("the informer's list was reordered in place")
	}
}
