package multinode_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

var (
	podpathOnce sync.Once
	podpathPath string
	podpathErr  error
)

// podpath runs the CLI with args on node i, in its namespace, and returns
// its output.
func (c *cluster) podpath(t *testing.T, i int, args ...string) string {
	t.Helper()
	podpathOnce.Do(func() {
		dir, err := cniBin()
		if err != nil {
			podpathErr = err
			return
		}
		podpathPath, podpathErr = sim.BuildPodpath(dir)
	})
	if podpathErr != nil {
		t.Fatal(podpathErr)
	}
	n := c.nodes[i]
	args = append([]string{"--pin-root", n.PinRoot, "--state-dir", n.StateDir}, args...)
	var out []byte
	err := n.Do(func() (err error) {
		out, err = exec.Command(podpathPath, args...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("node %s: podpath %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// peerState is what a node keeps for its peers, each part as a set of
// strings: the peers map ("prefix -> node address"), the kernel routes of
// podpath's protocol (their destinations) and the recorded peers as
// `podpath node peer list` shows them ("name address cidrs").
type peerState struct {
	entries, routes, listed []string
}

func (c *cluster) peerState(t *testing.T, i int) peerState {
	t.Helper()
	n := c.nodes[i]
	var s peerState
	m, err := maps.OpenPinned(n.PinRoot, maps.MapPeers)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	entries, err := maps.Entries[maps.PeerKey, maps.Peer](m)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range entries {
		s.entries = append(s.entries, fmt.Sprintf("%s -> %s", k.Prefix(), maps.AddrFrom16(v.Family, v.NodeAddr)))
	}
	err = n.Do(func() error {
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: 112}, netlink.RT_FILTER_PROTOCOL)
		for _, r := range rs {
			s.routes = append(s.routes, r.Dst.String())
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var listed []loader.Peer
	if err := json.Unmarshal([]byte(c.podpath(t, i, "node", "peer", "list", "-o", "json")), &listed); err != nil {
		t.Fatal(err)
	}
	for _, p := range listed {
		s.listed = append(s.listed, fmt.Sprintf("%s %s %v", p.Name, p.Address, p.PodCIDRs))
	}
	for _, l := range [][]string{s.entries, s.routes, s.listed} {
		slices.Sort(l)
	}
	return s
}

// wantPeerState is the state of a node whose peers are exactly peers.
func wantPeerState(peers ...*sim.Node) peerState {
	var s peerState
	for _, p := range peers {
		s.entries = append(s.entries, fmt.Sprintf("%s -> %s", p.PodCIDR, p.Address), fmt.Sprintf("%s/32 -> %s", p.Address, p.Address))
		s.routes = append(s.routes, p.PodCIDR.String())
		s.listed = append(s.listed, fmt.Sprintf("%s %s %v", p.Name, p.Address, []netip.Prefix{p.PodCIDR}))
	}
	for _, l := range [][]string{s.entries, s.routes, s.listed} {
		slices.Sort(l)
	}
	return s
}

func (c *cluster) expectPeerState(t *testing.T, i int, peers ...*sim.Node) {
	t.Helper()
	got, want := c.peerState(t, i), wantPeerState(peers...)
	for _, part := range []struct {
		what      string
		got, want []string
	}{
		{"peers map", got.entries, want.entries},
		{"routes of protocol 112", got.routes, want.routes},
		{"`podpath node peer list`", got.listed, want.listed},
	} {
		if !slices.Equal(part.got, part.want) {
			t.Errorf("node %s: %s: %q, want %q", c.nodes[i].Name, part.what, part.got, part.want)
		}
	}
}

// reach checks that the pod on node i reaches the pod on node j over TCP
// and UDP (servers on ports 7201 and 7202, UDP reporting on got).
func (c *cluster) reach(i, j int, got <-chan sim.Datagram) error {
	a, b := c.pods[i][0], c.pods[j][0]
	if _, _, err := fetchIdentity(a.Do, netip.AddrPortFrom(b.IP, 7201).String()); err != nil {
		return fmt.Errorf("TCP: %w", err)
	}
	if _, err := sim.RoundTripUDP(a.Do, b.Do, got, netip.AddrPortFrom(b.IP, 7202).String(), []byte("still there?")); err != nil {
		return fmt.Errorf("UDP: %w", err)
	}
	return nil
}

// A node removed from its peers' lists and added back, with the CLI on each
// other node as one joins hosts by hand: `podpath node peer delete`, then
// `add` on one and `apply -f` of a file on the other. Once the others have
// deleted it, its pods are no target any more: a new connection or datagram
// from a pod elsewhere to one of its pods fails within a second and nothing
// arrives; its own pods' connections to other nodes' pods fail too (in
// overlay mode the others drop what it encapsulates, counted as
// drop_unknown_peer). Nothing of it stays behind on the others: their peers
// maps, routes of protocol 112 and recorded peers are exactly those of the
// remaining nodes. Added back, it is reached again at once, and each node's
// state is whole again.
func TestNodeRemovedAndAddedBack(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := sharedCluster(t, mode)
			t.Cleanup(func() {
				if err := sim.JoinAll(c.nodes...); err != nil {
					t.Errorf("join the nodes again: %v", err)
				}
			})
			var udp []<-chan sim.Datagram
			for i, p := range c.pods {
				serveTCP(t, p[0].Do, c.nodes[i].Name, netip.AddrPortFrom(p[0].IP, 7201).String())
				udp = append(udp, serveUDP(t, p[0].Do, netip.AddrPortFrom(p[0].IP, 7202).String()))
			}
			const gone = 2
			g := c.nodes[gone]
			others := []int{0, 1}
			for _, i := range others {
				if err := c.reach(i, gone, udp[gone]); err != nil {
					t.Fatalf("before: node %d -> node %d: %v", i+1, gone+1, err)
				}
			}

			before := c.counts(t)
			for _, i := range others {
				c.podpath(t, i, "node", "peer", "delete", g.Name)
			}
			target := netip.AddrPortFrom(c.pods[gone][0].IP, 7201).String()
			for _, i := range others {
				p := c.pods[i][0]
				if got, err := sim.FetchTCP(p.Do, target, time.Second); err == nil {
					t.Errorf("node %d -> removed node %d: TCP still answered %q", i+1, gone+1, got)
				} else {
					t.Logf("node %d -> removed node %d: TCP: %v", i+1, gone+1, err)
				}
				if _, err := sim.ExchangeUDP(p.Do, netip.AddrPortFrom(c.pods[gone][0].IP, 7202).String(), []byte("gone?"), time.Second); err == nil {
					t.Errorf("node %d -> removed node %d: UDP still answered", i+1, gone+1)
				}
				back := netip.AddrPortFrom(p.IP, 7201).String()
				if got, err := sim.FetchTCP(c.pods[gone][0].Do, back, time.Second); err == nil {
					t.Errorf("removed node %d -> node %d: TCP still answered %q", gone+1, i+1, got)
				}
			}
			select {
			case d := <-udp[gone]:
				t.Errorf("the removed node's pod received %q from %s", d.Data, d.From)
			default:
			}
			after := c.counts(t)
			if mode == loader.RoutingVXLAN {
				for _, i := range others {
					if after[i]["from_overlay/drop_unknown_peer"] <= before[i]["from_overlay/drop_unknown_peer"] {
						t.Errorf("node %d dropped nothing from the removed node: %s", i+1, after[i].Since(before[i]))
					}
				}
			}
			c.expectPeerState(t, 0, c.nodes[1])
			c.expectPeerState(t, 1, c.nodes[0])

			// Back by `peer add` on node 1 and by `peer apply -f` of a
			// file listing all its peers on node 2.
			c.podpath(t, 0, "node", "peer", "add", g.Name, "--address", g.Address.String(), "--pod-cidr", g.PodCIDR.String())
			file := filepath.Join(t.TempDir(), "peers.yaml")
			yaml := "peers:\n"
			for _, p := range []*sim.Node{c.nodes[0], g} {
				yaml += fmt.Sprintf("- name: %s\n  address: %s\n  podCIDRs: [%s]\n", p.Name, p.Address, p.PodCIDR)
			}
			if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c.podpath(t, 1, "node", "peer", "apply", "-f", file)
			for _, i := range others {
				if err := c.reach(i, gone, udp[gone]); err != nil {
					t.Errorf("added back: node %d -> node %d: %v", i+1, gone+1, err)
				}
				if err := c.reach(gone, i, udp[i]); err != nil {
					t.Errorf("added back: node %d -> node %d: %v", gone+1, i+1, err)
				}
			}
			c.expectPeerState(t, 0, c.nodes[1], c.nodes[2])
			c.expectPeerState(t, 1, c.nodes[0], c.nodes[2])
		})
	}
}
