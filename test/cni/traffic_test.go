package cni_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/sim"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inPod runs fn in a pod's namespace; sockets made there stay there.
func inPod(t *testing.T, p *sim.Pod, fn func() error) {
	t.Helper()
	if err := p.NS.Do(func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatalf("in pod %s: %v", p.Name, err)
	}
}

// tcpExchange connects from one pod to a listener in another and checks a
// message goes there and its echo comes back.
func tcpExchange(t *testing.T, from, to *sim.Pod) {
	t.Helper()
	var ln net.Listener
	inPod(t, to, func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(to.IP.String(), "0"))
		return err
	})
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.Copy(c, c)
	}()
	var c net.Conn
	inPod(t, from, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err = d.Dial("tcp4", ln.Addr().String())
		return err
	})
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := fmt.Sprintf("tcp %s -> %s", from.Name, to.Name)
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("%s: write: %v", msg, err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != msg {
		t.Fatalf("%s: echo %q, %v", msg, got, err)
	}
	if la := c.LocalAddr().(*net.TCPAddr); la.IP.String() != from.IP.String() {
		t.Fatalf("%s: connection from %s, want the pod's %s", msg, la.IP, from.IP)
	}
}

// udpExchange sends a datagram from one pod to another and back.
func udpExchange(t *testing.T, from, to *sim.Pod) {
	t.Helper()
	var srv, cli net.PacketConn
	inPod(t, to, func() (err error) {
		srv, err = net.ListenPacket("udp4", net.JoinHostPort(to.IP.String(), "0"))
		return err
	})
	defer srv.Close()
	inPod(t, from, func() (err error) {
		cli, err = net.ListenPacket("udp4", net.JoinHostPort(from.IP.String(), "0"))
		return err
	})
	defer cli.Close()
	msg := []byte(fmt.Sprintf("udp %s -> %s", from.Name, to.Name))
	srv.SetDeadline(time.Now().Add(5 * time.Second))
	cli.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := cli.WriteTo(msg, srv.LocalAddr()); err != nil {
		t.Fatalf("%s: send: %v", msg, err)
	}
	buf := make([]byte, 256)
	k, peer, err := srv.ReadFrom(buf)
	if err != nil || string(buf[:k]) != string(msg) {
		t.Fatalf("%s: received %q, %v", msg, buf[:k], err)
	}
	if peer.(*net.UDPAddr).IP.String() != from.IP.String() {
		t.Fatalf("%s: datagram from %s, want %s", msg, peer, from.IP)
	}
	if _, err := srv.WriteTo(buf[:k], peer); err != nil {
		t.Fatalf("%s: reply: %v", msg, err)
	}
	if k, _, err = cli.ReadFrom(buf); err != nil || string(buf[:k]) != string(msg) {
		t.Fatalf("%s: reply %q, %v", msg, buf[:k], err)
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
	t.Logf("forward_local +%d packets", after-before)
}

// sendRaw sends a UDP datagram with a source address of our choosing from
// inside a pod, as a compromised workload could.
func sendRaw(t *testing.T, from *sim.Pod, src, dst netip.Addr, dport uint16, payload []byte) {
	t.Helper()
	pkt := make([]byte, 28+len(payload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	binary.BigEndian.PutUint16(pkt[6:], 0x4000) // don't fragment
	pkt[8] = 64
	pkt[9] = unix.IPPROTO_UDP
	s4, d4 := src.As4(), dst.As4()
	copy(pkt[12:16], s4[:])
	copy(pkt[16:20], d4[:])
	binary.BigEndian.PutUint16(pkt[20:], 40000)
	binary.BigEndian.PutUint16(pkt[22:], dport)
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload)))
	// A zero UDP checksum means "none" in IPv4; the kernel fills the IP one.
	copy(pkt[28:], payload)
	inPod(t, from, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: d4})
	})
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
	sendRaw(t, a, b.IP, c.IP, port, []byte("spoofed as b"))
	sendRaw(t, a, nobody, c.IP, port, []byte("spoofed as nobody"))
	sendRaw(t, a, a.IP, c.IP, port, []byte("honest"))

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
