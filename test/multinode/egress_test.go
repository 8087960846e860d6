package multinode_test

import (
	"net/netip"
	"testing"

	"github.com/podpath/podpath/internal/sim"
)

// Egress masquerade (on by default: pods' traffic leaving the node takes
// the node's address) never touches traffic to other nodes: a pod reaching
// another node's own address, over TCP and UDP, is seen there with the
// pod's address, as is a pod on another node (TestPodToPodAcrossNodes). A
// host on the underlay that is no node sees the pod's node instead, which
// shows the masquerade is at work. And the node itself reaches other
// nodes' pods, through the routes podpath keeps for their pod CIDRs.
func TestMasqueradeSparesNodes(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := sharedCluster(t, mode)
			host := c.outside(t)
			hostAddr := netip.AddrPortFrom(host.IP, 7101).String()
			serveTCP(t, host.Do, "outside", hostAddr)
			hostUDP := serveUDP(t, host.Do, hostAddr)
			var nodeUDP []<-chan sim.Datagram
			for i, n := range c.nodes {
				addr := netip.AddrPortFrom(n.Address, 7100).String()
				serveTCP(t, n.Do, n.Name, addr)
				nodeUDP = append(nodeUDP, serveUDP(t, n.Do, addr))
				p := c.pods[i][0]
				serveTCP(t, p.Do, p.Name, netip.AddrPortFrom(p.IP, 7102).String())
			}
			for i, n := range c.nodes {
				pod := c.pods[i][0]
				for j, other := range c.nodes {
					if i == j {
						continue
					}
					addr := netip.AddrPortFrom(other.Address, 7100).String()
					if _, seen, err := fetchIdentity(pod.Do, addr); err != nil || seen != pod.IP.String() {
						t.Errorf("TCP from a pod on node %d to node %d's address: seen as %q (%v), want the pod's %s", i+1, j+1, seen, err, pod.IP)
					}
					rt, err := sim.RoundTripUDP(pod.Do, other.Do, nodeUDP[j], addr, []byte("to a node"))
					if err != nil || rt.Seen.Addr() != pod.IP {
						t.Errorf("UDP from a pod on node %d to node %d's address: seen as %s (%v), want the pod's %s", i+1, j+1, rt.Seen, err, pod.IP)
					}
					peerPod := c.pods[j][0]
					if _, seen, err := fetchIdentity(n.Do, netip.AddrPortFrom(peerPod.IP, 7102).String()); err != nil || seen != n.Address.String() {
						t.Errorf("TCP from node %d itself to a pod on node %d: seen as %q (%v), want the node's %s", i+1, j+1, seen, err, n.Address)
					}
					if err := sim.Ping(n.Do, peerPod.IP, uint16(0x200+i), 56); err != nil {
						t.Errorf("node %d itself to a pod on node %d: %v", i+1, j+1, err)
					}
				}
				if _, seen, err := fetchIdentity(pod.Do, hostAddr); err != nil || seen != n.Address.String() {
					t.Errorf("TCP from a pod on node %d to a host that is no node: seen as %q (%v), want the node's %s", i+1, seen, err, n.Address)
				}
				rt, err := sim.RoundTripUDP(pod.Do, host.Do, hostUDP, hostAddr, []byte("to the outside"))
				if err != nil || rt.Seen.Addr() != n.Address {
					t.Errorf("UDP from a pod on node %d to a host that is no node: seen as %s (%v), want the node's %s", i+1, rt.Seen, err, n.Address)
				}
			}
		})
	}
}
