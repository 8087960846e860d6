package services_test

import (
	"net/netip"
	"testing"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/services"
)

// farPath is a node with a remote host behind its outside host: a backend
// (or a client) the node reaches through a router.
type farPath struct {
	node *sim.Node
	m    *services.Manager
	far  *sim.Remote
}

// newFarPath builds the node (pod CIDR cidr, uplink network
// 10.<uplinkNet>.0.0/24) and a remote host at 10.<uplinkNet+1>.0.2/24
// behind its outside host. The remote's network counts as the cluster's
// (another node's pods), so pods' traffic to it is not masqueraded.
func newFarPath(t *testing.T, name, cidr string, uplinkNet byte) *farPath {
	t.Helper()
	addr := func(net, host byte) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, net, 0, host}), 24)
	}
	farAddr := addr(uplinkNet+1, 2)
	p := &farPath{}
	p.node, p.m = newNode(t, name, cidr,
		sim.WithUplink(addr(uplinkNet, 1), addr(uplinkNet, 2)),
		sim.WithLoaderConfig(func(c *loader.Config) { c.ClusterCIDRs = append(c.ClusterCIDRs, farAddr.Masked()) }))
	var err error
	if p.far, err = p.node.AddRemote("far", addr(uplinkNet+1, 1), farAddr); err != nil {
		t.Fatal(err)
	}
	return p
}
