package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// nodeInfo is what the agent takes from its Node object.
type nodeInfo struct {
	podCIDR    netip.Prefix   // the first IPv4 one
	podCIDRs   []netip.Prefix // every IPv4 one
	internalIP netip.Addr
}

// waitForNode reads the Node until it has an IPv4 InternalIP and, with
// needCIDR, an IPv4 pod CIDR (kube-controller-manager's
// --allocate-node-cidrs sets it shortly after kubelet registers the Node).
func waitForNode(ctx context.Context, client kubernetes.Interface, name string, needCIDR bool) (nodeInfo, error) {
	var last string
	for {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		var info nodeInfo
		var missing string
		if err != nil {
			missing = err.Error()
		} else {
			info = nodeInfoOf(n)
			switch {
			case !info.internalIP.IsValid():
				missing = "no IPv4 InternalIP in status.addresses"
			case needCIDR && !info.podCIDR.IsValid():
				missing = "no IPv4 pod CIDR in spec.podCIDRs (is kube-controller-manager's --allocate-node-cidrs on, or give --pod-cidr)"
			}
		}
		if missing == "" {
			return info, nil
		}
		if missing != last {
			slog.Info("waiting for the Node", "node", name, "missing", missing)
			last = missing
		}
		select {
		case <-ctx.Done():
			return info, fmt.Errorf("node %s: %s: %w", name, missing, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func nodeInfoOf(n *corev1.Node) nodeInfo {
	var info nodeInfo
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() {
			if !info.podCIDR.IsValid() {
				info.podCIDR = p
			}
			info.podCIDRs = append(info.podCIDRs, p.Masked())
		}
	}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			info.internalIP = ip
			break
		}
	}
	return info
}

// deviceWithAddr names the device that holds ip.
func deviceWithAddr(ip netip.Addr) (string, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return "", err
			}
			return l.Attrs().Name, nil
		}
	}
	return "", fmt.Errorf("no device holds the Node's InternalIP %s: give --uplink", ip)
}
