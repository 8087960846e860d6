package multinode_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/services"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// streamSize is what the full-size TCP streams carry.
const streamSize = 8 << 20

// wantMTU is the pod MTU a node routing as mode says must choose on an
// underlay of MTU underlay: all of it, less the VXLAN overhead in overlay
// mode.
func wantMTU(mode string, underlay int) int {
	if mode == loader.RoutingVXLAN {
		return underlay - loader.VXLANOverhead
	}
	return underlay
}

// linkMTU is the MTU of device dev in the namespace do runs in.
func linkMTU(do func(func() error) error, dev string) (int, error) {
	var mtu int
	err := do(func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		mtu = l.Attrs().MTU
		return nil
	})
	return mtu, err
}

// expectMTUs checks the MTU every node of c chose and every pod's eth0
// (and in overlay mode the overlay device's), on an underlay of MTU
// underlay.
func (c *cluster) expectMTUs(t *testing.T, underlay int) {
	t.Helper()
	want := wantMTU(c.mode, underlay)
	for i, n := range c.nodes {
		if n.MTU != want {
			t.Errorf("node %s chose MTU %d, want %d", n.Name, n.MTU, want)
		}
		type device struct {
			do   func(func() error) error
			name string
		}
		devs := map[string]device{}
		for _, p := range c.pods[i] {
			devs["pod "+p.Name+" "+sim.IfName] = device{p.Do, sim.IfName}
		}
		if c.mode == loader.RoutingVXLAN {
			devs["node "+n.Name+" "+loader.OverlayDevice] = device{n.Do, loader.OverlayDevice}
		}
		for what, dev := range devs {
			mtu, err := linkMTU(dev.do, dev.name)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if mtu != want {
				t.Errorf("%s: MTU %d, want %d", what, mtu, want)
			}
		}
	}
}

// hashReceived, as a ServeTCP reply, is the SHA-256 of everything the
// client sent before it closed its side, in hex.
func hashReceived(c net.Conn) string {
	h := sha256.New()
	io.Copy(h, c)
	return hex.EncodeToString(h.Sum(nil))
}

// sendStream sends data from the namespace do runs in over one TCP
// connection to a hashReceived server at addr and checks the server
// received exactly data.
func sendStream(do func(func() error) error, addr string, data []byte, timeout time.Duration) error {
	var c net.Conn
	if err := do(func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(data); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("answer: %w", err)
	}
	sum := sha256.Sum256(data)
	if want := hex.EncodeToString(sum[:]); string(got) != want {
		return fmt.Errorf("the server received other bytes than the %d sent: SHA-256 %q, want %s", len(data), got, want)
	}
	return nil
}

// serveHash runs a hashReceived server on addr in the namespace do runs
// in, for the rest of the test.
func serveHash(t *testing.T, do func(func() error) error, addr string) {
	t.Helper()
	ln, err := sim.ServeTCP(do, addr, hashReceived)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

// stream sends streamSize random bytes over TCP from the namespace do runs
// in to a serveHash server at addr and says how long that took.
func stream(do func(func() error) error, addr string) (time.Duration, error) {
	data := make([]byte, streamSize)
	rand.Read(data)
	start := time.Now()
	err := sendStream(do, addr, data, 30*time.Second)
	return time.Since(start), err
}

// exchangeDF sends msg from the namespace do runs in on a UDP socket
// connected to addr with DF set and fragmentation forbidden
// (IP_PMTUDISC_DO) and returns the answer. A datagram larger than the
// path MTU the kernel knows fails to send with EMSGSIZE; an ICMP
// fragmentation needed about it fails the read with EMSGSIZE.
func exchangeDF(do func(func() error) error, addr string, msg []byte, timeout time.Duration) ([]byte, error) {
	var c net.Conn
	err := do(func() (err error) {
		if c, err = net.Dial("udp4", addr); err != nil {
			return err
		}
		raw, err := c.(*net.UDPConn).SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
		}); err != nil {
			return err
		}
		return serr
	})
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(msg); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("answer: %w", err)
	}
	return buf[:n], nil
}

// fragmentsMade is how many IP fragments the namespace do runs in made
// or reassembled since before (SNMP counters).
func fragmentsMade(t *testing.T, do func(func() error) error, before map[string]int64) int64 {
	t.Helper()
	now, err := sim.SNMP(do)
	if err != nil {
		t.Fatal(err)
	}
	return now["Ip.FragCreates"] - before["Ip.FragCreates"] + now["Ip.ReasmReqds"] - before["Ip.ReasmReqds"]
}

func snmp(t *testing.T, do func(func() error) error) map[string]int64 {
	t.Helper()
	s, err := sim.SNMP(do)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// expectFullSize checks, between the pods of the first two nodes of c,
// that a stream of streamSize random bytes arrives intact over TCP, that
// the largest UDP datagram the pod MTU fits (MTU less 28 bytes of IPv4 and
// UDP header), sent with DF, arrives and comes back intact with nothing
// fragmented anywhere on the way (the pods, the nodes: the overlay's
// packets fit the underlay), and that one byte more cannot be sent with DF
// (EMSGSIZE).
func (c *cluster) expectFullSize(t *testing.T) {
	t.Helper()
	a, b := c.pods[0][0], c.pods[1][0]
	addr := netip.AddrPortFrom(b.IP, 7400).String()
	serveHash(t, b.Do, addr)
	if took, err := stream(a.Do, addr); err != nil {
		t.Errorf("TCP stream across nodes: %v", err)
	} else {
		t.Logf("%d bytes over TCP across nodes in %v", streamSize, took.Round(time.Millisecond))
	}

	serveUDP(t, b.Do, addr)
	msg := make([]byte, c.nodes[0].MTU-28)
	rand.Read(msg)
	ends := []func(func() error) error{a.Do, b.Do, c.nodes[0].Do, c.nodes[1].Do}
	var before []map[string]int64
	for _, do := range ends {
		before = append(before, snmp(t, do))
	}
	if got, err := exchangeDF(a.Do, addr, msg, ioTimeout); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("a %d-byte datagram with DF across nodes: %d bytes came back (%v)", len(msg), len(got), err)
	}
	for i, do := range ends {
		if n := fragmentsMade(t, do, before[i]); n != 0 {
			t.Errorf("a %d-byte datagram with DF: %d fragments made or reassembled at %s", len(msg), n,
				[]string{"the client pod", "the server pod", "the client's node", "the server's node"}[i])
		}
	}
	if _, err := exchangeDF(a.Do, addr, append(msg, 0), ioTimeout); !errors.Is(err, syscall.EMSGSIZE) {
		t.Errorf("a %d-byte datagram with DF, one byte over the MTU: %v, want EMSGSIZE", len(msg)+1, err)
	}
}

// Pods get the MTU their node's path to other nodes takes, without being
// told: the uplink's in direct mode, 50 bytes less in overlay mode (the
// outer IPv4, UDP and VXLAN headers and the inner Ethernet header), on an
// underlay of 1500 bytes and on one of 9000 (jumbo frames). At that MTU a
// full-size TCP stream and the largest UDP datagram that fits, sent with
// DF, cross from a pod on one node to a pod on another intact and
// unfragmented; a datagram one byte larger cannot be sent with DF.
func TestMTUForTheMode(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			t.Run("underlay 1500", func(t *testing.T) {
				c := sharedCluster(t, mode)
				c.expectMTUs(t, 1500)
				c.expectFullSize(t)
			})
			t.Run("underlay 9000", func(t *testing.T) {
				c := newCluster(t, mode, 2, 1, 9000)
				c.expectMTUs(t, 9000)
				c.expectFullSize(t)
			})
		})
	}
}

// A host on the underlay, whose MTU is the underlay's 1500, is no pod:
// nothing made its packets fit the overlay. It sends node 1's NodePort
// (externalTrafficPolicy Cluster, the backend on node 2) UDP datagrams
// of 1472 bytes with DF. Routed directly they fit the way and arrive. In
// overlay mode the translated packet is 50 bytes too large for the overlay:
// from_netdev hands it to the stack (to_stack_mtu), which answers
// fragmentation needed quoting the packet as translated, to the backend.
// The error must reach the client quoting what the client sent, to node
// 1's NodePort: then the client's kernel finds its socket, the read fails
// with EMSGSIZE, the client's route to node 1 takes the overlay's MTU, and
// a datagram of the size that fits arrives. Quoting the backend, the error
// would match no socket and every such datagram would vanish. (TCP does
// not get there: the backend's MSS keeps the client's segments small
// enough, TestServiceStreamsAcrossNodes.)
func TestPathMTUNodePortToOtherNode(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c, host, _, _ := nodePortSetup(t, mode, "np-pmtu", "10.96.30.30", "203.0.113.30", 30130, services.TrafficPolicyCluster)
			// The shared host must not keep what it learns here.
			t.Cleanup(func() {
				if err := host.Do(flushRouteCache); err != nil {
					t.Errorf("forget the path MTU learned: %v", err)
				}
			})
			n := c.nodes[0]
			frontend := net.JoinHostPort(n.Address.String(), "30130")
			before := c.counts(t)[0]
			sent0 := snmp(t, n.Do)
			msg := make([]byte, 1500-28)
			rand.Read(msg)
			got, err := exchangeDF(host.Do, frontend, msg, ioTimeout)
			mtu, rerr := sim.RouteMTU(host.Do, n.Address)
			if rerr != nil {
				t.Fatal(rerr)
			}
			sent := snmp(t, n.Do)["Icmp.OutDestUnreachs"] - sent0["Icmp.OutDestUnreachs"]
			t.Logf("%d bytes with DF: %d came back (%v); node 1 sent %d destination unreachable; the client's route to node 1 has MTU %d; node 1 counted %s",
				len(msg), len(got), err, sent, mtu, c.counts(t)[0].Since(before))
			if mode == loader.RoutingDirect {
				if err != nil || !bytes.Equal(got, msg) {
					t.Errorf("%d bytes with DF, routed directly: %d came back (%v), want them all", len(msg), len(got), err)
				}
			} else {
				if !errors.Is(err, syscall.EMSGSIZE) {
					t.Errorf("%d bytes with DF into the overlay: %v, want EMSGSIZE from fragmentation needed", len(msg), err)
				}
				if sent < 1 {
					t.Errorf("node 1 sent no fragmentation needed: this test shows nothing")
				}
				if mtu != n.MTU {
					t.Errorf("the client's route to node 1 has MTU %d, want the overlay's %d", mtu, n.MTU)
				}
				fits := msg[:n.MTU-28]
				if got, err := exchangeDF(host.Do, frontend, fits, ioTimeout); err != nil || !bytes.Equal(got, fits) {
					t.Errorf("%d bytes with DF, the size that fits: %d came back (%v)", len(fits), len(got), err)
				}
			}

		})
	}
}

// flushRouteCache forgets the path MTUs the namespace it runs in learned
// (`ip route flush cache`).
func flushRouteCache() error {
	return os.WriteFile("/proc/sys/net/ipv4/route/flush", []byte("1"), 0o200)
}

// The underlay narrows on one path: node 1's route to node 2's address
// takes only 1400 bytes, less than the 1500 the overlay's packets need.
// The overlay's packets carry no DF (the VXLAN device's default), so node
// 1 fragments them on that path and node 2 reassembles them: a stream of
// several megabytes from a pod on node 1 to a pod on node 2 still arrives
// intact, and node 1's fragment count shows the path was narrow. (Routed
// directly, nodes share one segment and with it one MTU: no such path.)
func TestOverlayNarrowUnderlayPath(t *testing.T) {
	c := sharedCluster(t, loader.RoutingVXLAN)
	undo, err := sim.LimitRouteMTU(c.nodes[0].Do, netip.PrefixFrom(c.nodes[1].Address, 32), sim.UplinkName, netip.Addr{}, 1400)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := undo(); err != nil {
			t.Errorf("remove the narrow route: %v", err)
		}
	})
	a, b := c.pods[0][0], c.pods[1][0]
	addr := netip.AddrPortFrom(b.IP, 7401).String()
	serveHash(t, b.Do, addr)
	before := snmp(t, c.nodes[0].Do)
	took, err := stream(a.Do, addr)
	if err != nil {
		t.Fatalf("TCP stream over the narrow path: %v", err)
	}
	frags := snmp(t, c.nodes[0].Do)["Ip.FragCreates"] - before["Ip.FragCreates"]
	t.Logf("%d bytes in %v; node 1 made %d fragments", streamSize, took.Round(time.Millisecond), frags)
	if frags == 0 {
		t.Errorf("node 1 made no fragments: the path was not narrow, this test shows nothing")
	}
}

// Several megabytes each way through services whose backend is on another
// node, over TCP: from a pod on node 1 through a ClusterIP, and from a
// host on the underlay through node 1's NodePort. The client's node
// translates full-size segments (GSO packets of up to 64 KiB on the way
// out of a pod) and sends them on routed or encapsulated; the backend's
// node sends the answers back to it. Upload and download arrive intact.
func TestServiceStreamsAcrossNodes(t *testing.T) {
	for _, mode := range routingModes {
		t.Run(mode, func(t *testing.T) {
			c := sharedCluster(t, mode)
			host := c.outside(t)
			b := c.pods[1][0]
			serveHash(t, b.Do, netip.AddrPortFrom(b.IP, 7402).String())
			download := make([]byte, streamSize)
			rand.Read(download)
			ln, err := sim.ServeTCP(b.Do, netip.AddrPortFrom(b.IP, 7403).String(), func(net.Conn) string { return string(download) })
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			c.applyService(t, services.Service{
				Namespace: "mn", Name: "stream", Type: services.TypeNodePort,
				ClusterIP: netip.MustParseAddr("10.96.30.40"),
				Ports: []services.Port{
					{Name: "up", Port: 80, TargetPort: 7402, NodePort: 30140},
					{Name: "down", Port: 81, TargetPort: 7403, NodePort: 30141},
				},
			}, &backend{node: 1, pod: b})
			for _, client := range []struct {
				name     string
				do       func(func() error) error
				up, down string
			}{
				{"a pod on node 1 through the ClusterIP", c.pods[0][0].Do, "10.96.30.40:80", "10.96.30.40:81"},
				{"a host through node 1's NodePort", host.Do,
					net.JoinHostPort(c.nodes[0].Address.String(), "30140"), net.JoinHostPort(c.nodes[0].Address.String(), "30141")},
			} {
				took, err := stream(client.do, client.up)
				if err != nil {
					t.Errorf("%s: upload: %v", client.name, err)
				}
				start := time.Now()
				got, err := sim.FetchTCP(client.do, client.down, 30*time.Second)
				if err != nil || got != string(download) {
					t.Errorf("%s: download: %d of %d bytes, intact: %t (%v)", client.name, len(got), len(download), got == string(download), err)
				}
				t.Logf("%s: %d bytes up in %v, down in %v", client.name, streamSize, took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			}
		})
	}
}
