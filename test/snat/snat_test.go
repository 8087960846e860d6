// Package snat_test sends pods' traffic to a host behind the node's uplink
// and checks it leaves masqueraded, with the node's address and collision
// free ports, and that the replies find their pods.
package snat_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
)

var (
	podCIDR  = netip.MustParsePrefix("10.220.0.0/24")
	nodeAddr = netip.MustParsePrefix("10.252.0.1/24")
	outAddr  = netip.MustParsePrefix("10.252.0.2/24")
)

func newNode(t *testing.T, pods int, opts ...sim.Option) (*sim.Node, []*sim.Pod) {
	t.Helper()
	node, err := sim.NewNode("snat", podCIDR, append([]sim.Option{sim.WithUplink(nodeAddr, outAddr)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	var ps []*sim.Pod
	for i := range pods {
		p, err := node.AddPod(context.Background(), fmt.Sprintf("p%d", i))
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return node, ps
}

// tcpServer runs on the outside host and answers every connection with
// the address and port it came from.
func tcpServer(t *testing.T, o *sim.Outside) string {
	t.Helper()
	var ln net.Listener
	if err := o.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(o.IP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, c.RemoteAddr().String()+"\n")
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// dial opens a connection from a pod and returns it with what the server
// said it saw as the client.
func dial(p *sim.Pod, addr string) (net.Conn, string, error) {
	var c net.Conn
	if err := p.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 3*time.Second)
		return err
	}); err != nil {
		return nil, "", err
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		c.Close()
		return nil, "", err
	}
	c.SetReadDeadline(time.Time{})
	return c, string(buf[:n-1]), nil
}

func TestOutsideSeesNodeAddress(t *testing.T) {
	node, pods := newNode(t, 2)
	srv := tcpServer(t, node.Outside)
	for _, p := range pods {
		c, seen, err := dial(p, srv)
		if err != nil {
			t.Fatalf("%s -> outside: %v", p.Name, err)
		}
		c.Close()
		host, _, _ := net.SplitHostPort(seen)
		if host != node.Outside.NodeIP.String() {
			t.Fatalf("outside saw %s from %s (pod %s), want the node's %s", seen, p.Name, p.IP, node.Outside.NodeIP)
		}
	}
	if n := counter(t, node, maps.HookToNetdev, maps.ReasonSNAT); n == 0 {
		t.Fatal("no packet counted as masqueraded by to_netdev")
	}
}

func TestUDPAndICMPEcho(t *testing.T) {
	node, pods := newNode(t, 1)
	o := node.Outside
	var srv net.PacketConn
	if err := o.Do(func() (err error) {
		srv, err = net.ListenPacket("udp4", net.JoinHostPort(o.IP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo([]byte(from.String()), from)
			_ = n
		}
	}()
	var cli net.PacketConn
	if err := pods[0].Do(func() (err error) {
		cli, err = net.ListenPacket("udp4", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	cli.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := cli.WriteTo([]byte("hi"), srv.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, from, err := cli.ReadFrom(buf)
	if err != nil {
		t.Fatalf("UDP reply: %v", err)
	}
	if from.String() != srv.LocalAddr().String() {
		t.Fatalf("UDP reply from %s, want %s", from, srv.LocalAddr())
	}
	if host, _, _ := net.SplitHostPort(string(buf[:n])); host != o.NodeIP.String() {
		t.Fatalf("outside saw UDP from %s, want %s", buf[:n], o.NodeIP)
	}

	// ICMP echo, identified by its id: the reply reaches the pod.
	if err := sim.Ping(pods[0].Do, o.IP, 0x4242, 8); err != nil {
		t.Fatalf("ping outside from pod: %v", err)
	}
}

// A thousand concurrent flows from several pods to one destination port:
// every one gets its own port on the node's address.
func TestThousandFlowsDistinctMappings(t *testing.T) {
	node, pods := newNode(t, 4)
	srv := tcpServer(t, node.Outside)
	const flows = 1000
	var (
		mu    sync.Mutex
		seen  = map[string]string{}
		conns []net.Conn
		wg    sync.WaitGroup
		errs  = make(chan error, flows)
		sem   = make(chan struct{}, 64)
	)
	for i := range flows {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			p := pods[i%len(pods)]
			c, s, err := dial(p, srv)
			if err != nil {
				errs <- fmt.Errorf("flow %d from %s: %w", i, p.Name, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			conns = append(conns, c)
			if prev, dup := seen[s]; dup {
				errs <- fmt.Errorf("flows %s and %d share the mapping %s", prev, i, s)
			}
			seen[s] = fmt.Sprint(i)
		}(i)
	}
	wg.Wait()
	close(errs)
	for _, c := range conns {
		defer c.Close()
	}
	for err := range errs {
		t.Fatal(err)
	}
	for s := range seen {
		host, _, _ := net.SplitHostPort(s)
		if host != node.Outside.NodeIP.String() {
			t.Fatalf("a flow left as %s", s)
		}
	}
	if len(seen) != flows {
		t.Fatalf("%d distinct mappings for %d flows", len(seen), flows)
	}
}

// With a tiny port range, the flow after the last free port is dropped and
// counted while the established ones keep working; once they close and
// their mappings expire, new flows get ports again.
func TestPortExhaustionAndRecovery(t *testing.T) {
	const ports = 8
	node, pods := newNode(t, 1, sim.WithLoaderConfig(func(c *loader.Config) {
		c.SNATPortMin, c.SNATPortMax = 20000, 20000+ports-1
	}))
	srv := tcpServer(t, node.Outside)
	var conns []net.Conn
	for i := range ports {
		c, _, err := dial(pods[0], srv)
		if err != nil {
			t.Fatalf("flow %d of %d: %v", i, ports, err)
		}
		conns = append(conns, c)
	}
	before := counter(t, node, maps.HookToNetdev, maps.ReasonDropNATNoPort)
	if _, _, err := dial(pods[0], srv); err == nil {
		t.Fatal("a flow beyond the port range got through")
	}
	if after := counter(t, node, maps.HookToNetdev, maps.ReasonDropNATNoPort); after <= before {
		t.Fatalf("drop_nat_no_port stayed at %d", after)
	}
	// Established flows are unaffected.
	for i, c := range conns {
		if _, err := c.Write([]byte("still here")); err != nil {
			t.Fatalf("established flow %d broke: %v", i, err)
		}
	}
	// Half close gracefully, half with a reset the other side never
	// answers: both must free their mappings promptly.
	for i, c := range conns {
		if i%2 == 1 {
			c.(*net.TCPConn).SetLinger(0)
		}
		c.Close()
	}
	// FIN or RST shortens the mappings' lifetime to 10 s; after that
	// the reaper frees them (and the allocator would take them over).
	time.Sleep(11 * time.Second)
	reaped, err := maps.ReapExpiredPinnedNAT(node.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	if reaped != 2*ports {
		t.Fatalf("reaped %d expired mappings, want %d (both directions of %d flows)", reaped, 2*ports, ports)
	}
	c, _, err := dial(pods[0], srv)
	if err != nil {
		t.Fatalf("no recovery after the flows closed: %v", err)
	}
	c.Close()

	stats, err := maps.OpenPinned(node.PinRoot, maps.MapNatStats)
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	st, err := maps.ReadNATStats(stats)
	if err != nil {
		t.Fatal(err)
	}
	if st["allocated"] != ports+1 || st["no_port"] == 0 {
		t.Fatalf("NAT statistics %v: want %d allocations and the failure counted", st, ports+1)
	}
}

func TestPodReachesNodeUnmasqueraded(t *testing.T) {
	node, pods := newNode(t, 1)
	var ln net.Listener
	if err := node.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(node.Outside.NodeIP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			got <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}
	}()
	var c net.Conn
	if err := pods[0].Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 3*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if ip := <-got; ip != pods[0].IP.String() {
		t.Fatalf("node saw %s, want the pod's own %s", ip, pods[0].IP)
	}
}

func counter(t *testing.T, n *sim.Node, hook maps.Hook, reason maps.Reason) uint64 {
	t.Helper()
	v, err := n.Packets(hook, reason)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
