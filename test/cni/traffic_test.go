package cni_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/sim"
	"github.com/vishvananda/netlink"
)

// inPod runs fn in a pod's namespace; sockets made there stay there.
func inPod(t *testing.T, p *sim.Pod, fn func() error) {
	t.Helper()
	if err := p.NS.Do(func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatalf("in pod %s: %v", p.Name, err)
	}
}

// tcpExchange sends a message over TCP from one pod to an echo server in
// another and checks it comes back.
func tcpExchange(t *testing.T, from, to *sim.Pod) {
	t.Helper()
	if _, err := sim.TCPEcho(from, to, []byte(fmt.Sprintf("tcp %s -> %s", from.Name, to.Name))); err != nil {
		t.Fatal(err)
	}
}

// udpExchange sends a datagram from one pod to an echo server in another
// and checks the reply.
func udpExchange(t *testing.T, from, to *sim.Pod) {
	t.Helper()
	if _, err := sim.UDPEcho(from, to, []byte(fmt.Sprintf("udp %s -> %s", from.Name, to.Name))); err != nil {
		t.Fatal(err)
	}
}

// Three pods on a node without forwarding or a bridge reach each other over
// TCP and UDP, and from_pod's forward_local counter shows the eBPF redirect
// carried every packet.
func TestPodToPodTraffic(t *testing.T) {
	n := newNode(t, "traffic", "10.77.1.0/24")
	pods := []*sim.Pod{addPod(t, n, "a"), addPod(t, n, "b"), addPod(t, n, "c")}

	if err := n.Do(func() error {
		fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err != nil || strings.TrimSpace(string(fwd)) != "0" {
			return fmt.Errorf("node ip_forward = %q, %v; want 0", fwd, err)
		}
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Type() == "bridge" {
				return fmt.Errorf("node has a bridge %s", l.Attrs().Name)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	before := counters(t, n)["forward_local"]
	for _, from := range pods {
		for _, to := range pods {
			if from != to {
				tcpExchange(t, from, to)
				udpExchange(t, from, to)
			}
		}
	}
	after := counters(t, n)["forward_local"]
	// Per ordered pair: a TCP handshake, data, FIN and ACKs both ways and a
	// UDP datagram and reply; 6 pairs of at least 8 packets each.
	if after-before < 6*8 {
		t.Fatalf("forward_local rose by %d packets, want at least %d", after-before, 6*8)
	}
	// Nothing a well-behaved pod sends is dropped: no IPv6 chatter, no ARP.
	all := counters(t, n)
	for reason, packets := range all {
		if strings.HasPrefix(reason, "drop_") && packets > 0 {
			t.Errorf("from_pod dropped %d packets as %s", packets, reason)
		}
	}
	t.Logf("from_pod counters %v", all)
}

// A pod that forges its source address, whether another pod's or one nobody
// holds, is dropped by from_pod and counted under drop_spoofed_ip; the
// same raw send with its own address goes through.
func TestSpoofedSourceDropped(t *testing.T) {
	n := newNode(t, "spoof", "10.77.2.0/24")
	a, b, c := addPod(t, n, "a"), addPod(t, n, "b"), addPod(t, n, "c")

	var srv net.PacketConn
	inPod(t, c, func() (err error) {
		srv, err = net.ListenPacket("udp4", net.JoinHostPort(c.IP.String(), "0"))
		return err
	})
	defer srv.Close()
	port := uint16(srv.LocalAddr().(*net.UDPAddr).Port)
	received := make(chan string, 8)
	go func() {
		buf := make([]byte, 256)
		for {
			k, peer, err := srv.ReadFrom(buf)
			if err != nil {
				close(received)
				return
			}
			received <- fmt.Sprintf("%s from %s", buf[:k], peer)
		}
	}()

	before := counters(t, n)
	nobody := netip.MustParseAddr("10.77.2.250")
	for _, send := range []struct {
		src netip.Addr
		msg string
	}{{b.IP, "spoofed as b"}, {nobody, "spoofed as nobody"}, {a.IP, "honest"}} {
		if err := sim.SendSpoofedUDP(a, send.src, c.IP, port, []byte(send.msg)); err != nil {
			t.Fatal(err)
		}
	}

	select {
	case got := <-received:
		if got != "honest from "+net.JoinHostPort(a.IP.String(), "40000") {
			t.Fatalf("pod c received %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the honest datagram did not arrive")
	}
	select {
	case got := <-received:
		t.Fatalf("a spoofed datagram arrived: %q", got)
	case <-time.After(300 * time.Millisecond):
	}
	after := counters(t, n)
	if d := after["drop_spoofed_ip"] - before["drop_spoofed_ip"]; d != 2 {
		t.Fatalf("drop_spoofed_ip rose by %d, want 2 (counters %v)", d, after)
	}
}
