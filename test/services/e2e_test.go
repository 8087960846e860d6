package services_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
	"golang.org/x/sys/unix"
)

var (
	cniBinOnce sync.Once
	cniBin     string
	cniErr     error
)

// buildCNI builds the CNI plugin once for every test.
func buildCNI(t *testing.T) string {
	t.Helper()
	cniBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "podpath-svc-test-bin-")
		if err != nil {
			cniErr = err
			return
		}
		cniBin, cniErr = sim.BuildCNI(dir)
	})
	if cniErr != nil {
		t.Fatal(cniErr)
	}
	return cniBin
}

// nodeOptions are the sim options of every test node: the shared plugin
// build, and the plugin's log only with -v.
func nodeOptions(t *testing.T, more ...sim.Option) []sim.Option {
	opts := []sim.Option{sim.WithCNIBin(buildCNI(t))}
	if !testing.Verbose() {
		opts = append(opts, sim.WithPluginStderr(io.Discard))
	}
	return append(opts, more...)
}

// newNode is a simulated node whose services are programmed by a Manager.
func newNode(t *testing.T, name, cidr string, opts ...sim.Option) (*sim.Node, *services.Manager) {
	t.Helper()
	n, err := sim.NewNode(name, netip.MustParsePrefix(cidr), nodeOptions(t, opts...)...)
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	m, err := services.Open(n.PinRoot, n.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return n, m
}

func addPod(t *testing.T, n *sim.Node, name string) *sim.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := n.AddPod(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// serve runs a TCP and a UDP server on the pod's port 8080. The TCP server
// greets each connection with "<pod> <client address>\n" and then echoes;
// the UDP server answers each datagram with "<pod> <client address> <data>".
// They stop when the test ends or when the returned func is called.
func serve(t *testing.T, p *sim.Pod) (stop func()) {
	t.Helper()
	addr := net.JoinHostPort(p.IP.String(), "8080")
	return serveIn(t, p.Do, p.Name, addr, addr)
}

// serveIn runs serve's servers as name, TCP on tcpAddr and UDP on udpAddr,
// inside the namespace do runs in (Pod.Do, Node.Do).
func serveIn(t *testing.T, do func(func() error) error, name, tcpAddr, udpAddr string) (stop func()) {
	t.Helper()
	var (
		ln net.Listener
		pc net.PacketConn
	)
	if err := do(func() (err error) {
		if ln, err = net.Listen("tcp4", tcpAddr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", udpAddr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
				io.Copy(c, c)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			fmt.Fprintf(writerTo{pc, from}, "%s %s %s", name, from.(*net.UDPAddr).IP, buf[:n])
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ln.Close()
			pc.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

type writerTo struct {
	pc net.PacketConn
	to net.Addr
}

func (w writerTo) Write(b []byte) (int, error) { return w.pc.WriteTo(b, w.to) }

// conn is a connection from a pod to a service, with the greeting read.
type conn struct {
	net.Conn
	r       *bufio.Reader
	backend string // the pod that answered
	client  string // the client address the backend saw
}

// dial connects from pod p to addr and reads the backend's greeting.
func dial(p *sim.Pod, addr string, timeout time.Duration) (*conn, error) {
	var c net.Conn
	if err := p.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	}); err != nil {
		return nil, err
	}
	cc, err := greet(&conn{Conn: c})
	if err != nil {
		c.Close()
		return nil, err
	}
	return cc, nil
}

// greet reads the backend's greeting on a new connection.
func greet(c *conn) (*conn, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.r = bufio.NewReader(c.Conn)
	line, err := c.r.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	c.backend, c.client, _ = strings.Cut(strings.TrimSpace(line), " ")
	return c, nil
}

// echo sends a line and checks it comes back.
func (c *conn) echo(msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != msg {
		return fmt.Errorf("echo %q, sent %q", got, msg)
	}
	return nil
}

// request is one short connection: greeting, one echo, close.
func request(p *sim.Pod, addr string) (backend, client string, err error) {
	c, err := dial(p, addr, 3*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	if err := c.echo("hello"); err != nil {
		return "", "", err
	}
	return c.backend, c.client, nil
}

func counter(t *testing.T, n *sim.Node, reason maps.Reason) uint64 {
	t.Helper()
	cs, err := n.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, c := range cs {
		if c.Reason == reason {
			sum += c.Packets
		}
	}
	return sum
}

func backendsOf(pods ...*sim.Pod) []services.Backend {
	out := make([]services.Backend, len(pods))
	for i, p := range pods {
		out[i] = services.Backend{IP: p.IP, Ready: true, Local: true}
	}
	return out
}

const vipAddr = "10.96.0.10:80"

func webService(backends ...services.Backend) services.Service {
	return services.Service{
		Namespace: "e2e", Name: "web",
		ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports: []services.Port{
			{Name: "tcp", Port: 80, TargetPort: 8080},
			{Name: "udp", Protocol: services.ProtocolUDP, Port: 80, TargetPort: 8080},
		},
		Backends: backends,
	}
}

// A ClusterIP service 10.96.0.10:80 (TCP and UDP) in front of three pods
// serving on 8080, reached from a client pod on the same node.
func TestClusterIPEndToEnd(t *testing.T) {
	node, m := newNode(t, "svc", "10.211.0.0/24")
	ctx := context.Background()
	var pods []*sim.Pod
	for _, name := range []string{"web-1", "web-2", "web-3"} {
		p := addPod(t, node, name)
		serve(t, p)
		pods = append(pods, p)
	}
	client := addPod(t, node, "client")
	web := webService(backendsOf(pods...)...)
	if _, err := m.Apply(ctx, []services.Service{web}); err != nil {
		t.Fatal(err)
	}

	// (a) random: 300 new connections reach all three backends; each gets
	// at least 60 (expected 100, standard deviation 8.2: 60 is almost five
	// deviations out). (h) Every backend sees the client pod's own address:
	// no SNAT.
	t.Run("random spread, client address kept", func(t *testing.T) {
		seen := map[string]int{}
		for i := range 300 {
			backend, from, err := request(client, vipAddr)
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			if from != client.IP.String() {
				t.Fatalf("backend %s saw client %s, want the client pod's %s (no SNAT)", backend, from, client.IP)
			}
			seen[backend]++
		}
		t.Logf("random: %v", seen)
		for _, p := range pods {
			if seen[p.Name] < 60 {
				t.Errorf("%s got %d of 300 connections, want at least 60: %v", p.Name, seen[p.Name], seen)
			}
		}
	})

	// (b) round robin: the next-slot counter is per CPU; with the client
	// pinned to one CPU (its SYNs reach from_pod on the CPU that sends
	// them), 300 connections give each backend exactly 100. Tolerance: 2,
	// for a SYN handled by another CPU.
	t.Run("round robin spread", func(t *testing.T) {
		rr := web
		rr.Algorithm = services.AlgorithmRoundRobin
		if _, err := m.Upsert(ctx, rr); err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		err := client.Do(func() error {
			var old, one unix.CPUSet
			if err := unix.SchedGetaffinity(0, &old); err != nil {
				return err
			}
			for cpu := 0; cpu < runtime.NumCPU(); cpu++ {
				if old.IsSet(cpu) {
					one.Set(cpu)
					break
				}
			}
			if err := unix.SchedSetaffinity(0, &one); err != nil {
				return err
			}
			defer unix.SchedSetaffinity(0, &old)
			for i := range 300 {
				c, err := net.DialTimeout("tcp4", vipAddr, 3*time.Second)
				if err != nil {
					return fmt.Errorf("connection %d: %w", i, err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				c.Close()
				if err != nil {
					return fmt.Errorf("connection %d: %w", i, err)
				}
				name, _, _ := strings.Cut(line, " ")
				seen[name]++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round robin: %v", seen)
		for _, p := range pods {
			if d := seen[p.Name] - 100; d < -2 || d > 2 {
				t.Errorf("%s got %d of 300 connections, want 100 +- 2: %v", p.Name, seen[p.Name], seen)
			}
		}
	})

	// (c) ClientIP affinity: every connection from the client goes to one
	// backend.
	t.Run("client IP affinity", func(t *testing.T) {
		aff := web
		aff.SessionAffinity = services.AffinityClientIP
		if _, err := m.Upsert(ctx, aff); err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for i := range 50 {
			backend, _, err := request(client, vipAddr)
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			seen[backend]++
		}
		if len(seen) != 1 {
			t.Fatalf("with ClientIP affinity the client reached %v, want one backend", seen)
		}
		if _, err := m.Upsert(ctx, web); err != nil {
			t.Fatal(err)
		}
	})

	// (d) UDP through the VIP: the reply comes from the VIP and port, from
	// a backend that saw the client's address.
	t.Run("UDP", func(t *testing.T) {
		seen := map[string]bool{}
		for i := range 20 {
			err := client.Do(func() error {
				pc, err := net.ListenPacket("udp4", net.JoinHostPort(client.IP.String(), "0"))
				if err != nil {
					return err
				}
				defer pc.Close()
				pc.SetDeadline(time.Now().Add(3 * time.Second))
				vip, _ := net.ResolveUDPAddr("udp4", vipAddr)
				if _, err := pc.WriteTo([]byte("ping"), vip); err != nil {
					return err
				}
				buf := make([]byte, 512)
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return fmt.Errorf("no reply: %w", err)
				}
				if from.String() != vipAddr {
					return fmt.Errorf("reply from %s, want the VIP %s", from, vipAddr)
				}
				f := strings.Fields(string(buf[:n]))
				if len(f) != 3 || f[1] != client.IP.String() || f[2] != "ping" {
					return fmt.Errorf("reply %q", buf[:n])
				}
				seen[f[0]] = true
				return nil
			})
			if err != nil {
				t.Fatalf("datagram %d: %v", i, err)
			}
		}
		t.Logf("UDP answered by %v", seen)
	})

	// (e) A service without backends refuses at once: from_pod answers the
	// SYN with ICMP port unreachable, which the client's stack turns into
	// ECONNREFUSED.
	t.Run("no backends: connection refused", func(t *testing.T) {
		empty := services.Service{Namespace: "e2e", Name: "empty", ClusterIP: netip.MustParseAddr("10.96.0.12"),
			Ports: []services.Port{{Port: 80, TargetPort: 8080}}}
		if _, err := m.Upsert(ctx, empty); err != nil {
			t.Fatal(err)
		}
		before := counter(t, node, maps.ReasonSvcReject)
		start := time.Now()
		_, err := dial(client, "10.96.0.12:80", 3*time.Second)
		took := time.Since(start)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial a service without backends: %v, want connection refused", err)
		}
		if took > time.Second {
			t.Fatalf("refusal took %v, want it at once", took)
		}
		if after := counter(t, node, maps.ReasonSvcReject); after <= before {
			t.Fatalf("svc_reject counter %d -> %d, want it to rise", before, after)
		}
	})

	// (f) Hairpin: a backend reaching itself through a service. The
	// datapath makes the frontend the source, so the backend sees the VIP
	// as its client and the reply comes back through from_pod.
	t.Run("hairpin", func(t *testing.T) {
		self := services.Service{Namespace: "e2e", Name: "self", ClusterIP: netip.MustParseAddr("10.96.0.13"),
			Ports: []services.Port{{Port: 80, TargetPort: 8080}}, Backends: backendsOf(pods[0])}
		if _, err := m.Upsert(ctx, self); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			backend, from, err := request(pods[0], "10.96.0.13:80")
			if err != nil {
				t.Fatalf("hairpin connection %d: %v", i, err)
			}
			if backend != pods[0].Name || from != "10.96.0.13" {
				t.Fatalf("hairpin reached %s seeing client %s, want %s seeing the VIP", backend, from, pods[0].Name)
			}
		}
	})

	// Deleting the service: the VIP answers no more.
	t.Run("deleted", func(t *testing.T) {
		if _, err := m.Delete(ctx, "e2e", "web"); err != nil {
			t.Fatal(err)
		}
		if c, err := dial(client, vipAddr, 500*time.Millisecond); err == nil {
			c.Close()
			t.Fatalf("deleted service still answers (backend %s)", c.backend)
		}
	})

	if drops := dropCounters(t, node); drops != "" {
		t.Errorf("drops:%s", drops)
	}
}

// dropCounters lists the node's drop counters, "" when there are none.
func dropCounters(t *testing.T, n *sim.Node) string {
	t.Helper()
	cs, err := n.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, c := range cs {
		if c.Reason.IsDrop() {
			fmt.Fprintf(&b, "\n\t%s/%s: %d", c.Hook, c.Reason, c.Packets)
		}
	}
	return b.String()
}
