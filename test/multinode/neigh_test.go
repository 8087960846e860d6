package multinode_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/sim"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A node whose uplink MAC changes under the same address (a machine
// replaced, a NIC swapped, a VM recreated) stays reachable from the other
// nodes' pods. The other node's neighbour entry for it still holds the old
// MAC, gone stale as it does once nothing has confirmed it for a while;
// frames to the old MAC go nowhere (the switch sends them to a port that
// drops them). podpath leaves the MAC to the neighbour subsystem
// (bpf_redirect_neigh), which probes a stale entry it is asked to use, so
// the pod's packets reach the node again within the probe delay (1 s here)
// and the unicast probes that fail on the old MAC (3 x 200 ms), after which
// a broadcast request finds the new one. A MAC taken from the FIB lookup
// would be used for as long as the stale entry stays, which, with fewer
// entries than gc_thresh1, is for ever.
func TestNodeMACChange(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, mode, 2, 1, 0)
			client, server := c.pods[0][0], c.pods[1][0]
			serveTCP(t, server.Do, c.nodes[1].Name, netip.AddrPortFrom(server.IP, 7201).String())
			udp := serveUDP(t, server.Do, netip.AddrPortFrom(server.IP, 7202).String())
			if err := c.reach(0, 1, udp); err != nil {
				t.Fatalf("before: %v", err)
			}

			// Node 1 probes a stale entry after 1 s, every 200 ms.
			for file, v := range map[string]string{"delay_first_probe_time": "1", "retrans_time_ms": "200"} {
				path := fmt.Sprintf("/proc/sys/net/ipv4/neigh/%s/%s", sim.UplinkName, file)
				if err := c.nodes[0].Do(func() error { return os.WriteFile(path, []byte(v), 0o644) }); err != nil {
					t.Fatal(err)
				}
			}
			old, fresh := setUplinkMAC(t, c.nodes[1], mustParseMAC(t, "02:00:5e:10:00:99"))
			sinkMAC(t, c.underlay, old)
			staleNeighbour(t, c.nodes[0], c.nodes[1].Address, old)

			start := time.Now()
			var err error
			for time.Since(start) < 15*time.Second {
				if _, err = sim.ExchangeUDP(client.Do, netip.AddrPortFrom(server.IP, 7202).String(), []byte("new MAC?"), 500*time.Millisecond); err == nil {
					break
				}
			}
			if err != nil {
				t.Fatalf("node 2 not reached in %v after its MAC changed: %v (node 1's entry: %s)", time.Since(start).Round(time.Millisecond), err, neighbourOf(t, c.nodes[0], c.nodes[1].Address))
			}
			t.Logf("node 2 reached again %v after its MAC changed", time.Since(start).Round(time.Millisecond))
			drain(udp)
			if err := c.reach(0, 1, udp); err != nil {
				t.Errorf("after: %v", err)
			}
			if got := neighbourOf(t, c.nodes[0], c.nodes[1].Address); got != fresh.String() {
				t.Errorf("node 1's neighbour entry for node 2 holds %s, want the new MAC %s", got, fresh)
			}
		})
	}
}

// drain takes what a UDP server has received so far, until it has been
// quiet for 200 ms.
func drain(got <-chan sim.Datagram) {
	for {
		select {
		case <-got:
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

func mustParseMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// setUplinkMAC gives node n's uplink the MAC mac, returning the old one.
func setUplinkMAC(t *testing.T, n *sim.Node, mac net.HardwareAddr) (old, fresh net.HardwareAddr) {
	t.Helper()
	err := n.Do(func() error {
		l, err := netlink.LinkByName(sim.UplinkName)
		if err != nil {
			return err
		}
		old = l.Attrs().HardwareAddr
		return netlink.LinkSetHardwareAddr(l, mac)
	})
	if err != nil {
		t.Fatalf("set %s's uplink MAC: %v", n.Name, err)
	}
	return old, mac
}

// sinkMAC makes the underlay's switch send frames for mac to a port of
// its own that drops them, as a switch sends them to where the old machine
// was.
func sinkMAC(t *testing.T, u *sim.Underlay, mac net.HardwareAddr) {
	t.Helper()
	err := u.NS.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "sink0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "sink0p"}); err != nil {
			return err
		}
		br, err := netlink.LinkByName(sim.UnderlayBridge)
		if err != nil {
			return err
		}
		for _, name := range []string{"sink0", "sink0p"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if name == "sink0" {
				if err := netlink.LinkSetMaster(l, br); err != nil {
					return err
				}
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		sink, err := netlink.LinkByName("sink0")
		if err != nil {
			return err
		}
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: sink.Attrs().Index, Family: unix.AF_BRIDGE,
			State: netlink.NUD_NOARP, Flags: netlink.NTF_MASTER, HardwareAddr: mac})
	})
	if err != nil {
		t.Fatalf("send %s to a sink on the underlay: %v", mac, err)
	}
}

// staleNeighbour sets node n's neighbour entry for addr to mac, stale.
func staleNeighbour(t *testing.T, n *sim.Node, addr netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	err := n.Do(func() error {
		l, err := netlink.LinkByName(sim.UplinkName)
		if err != nil {
			return err
		}
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_INET,
			State: netlink.NUD_STALE, IP: addr.AsSlice(), HardwareAddr: mac})
	})
	if err != nil {
		t.Fatalf("make %s's entry for %s stale: %v", n.Name, addr, err)
	}
}

// neighbourOf is node n's neighbour entry for addr on its uplink: its MAC,
// or what it is not.
func neighbourOf(t *testing.T, n *sim.Node, addr netip.Addr) string {
	t.Helper()
	out := "none"
	n.Do(func() error {
		l, err := netlink.LinkByName(sim.UplinkName)
		if err != nil {
			return err
		}
		ns, err := netlink.NeighList(l.Attrs().Index, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, e := range ns {
			if a, ok := netip.AddrFromSlice(e.IP); ok && a.Unmap() == addr {
				out = e.HardwareAddr.String()
				if e.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE) != 0 {
					out = fmt.Sprintf("unresolved (state %#x)", e.State)
				}
			}
		}
		return nil
	})
	return out
}
