package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/csum"
	"golang.org/x/sys/unix"
)

// Do runs fn in the pod's network namespace; sockets opened there stay there.
func (p *Pod) Do(fn func() error) error {
	if p.NS == nil {
		return fmt.Errorf("pod %s has no network namespace", p.Name)
	}
	return p.NS.Do(func(ns.NetNS) error { return fn() })
}

const probeTimeout = 5 * time.Second

// TCPEcho opens a TCP connection from one pod to an echo server in another,
// sends msg and checks it comes back whole. It returns the time from dial to
// the last byte of the echo.
func TCPEcho(from, to *Pod, msg []byte) (time.Duration, error) {
	var ln net.Listener
	if err := to.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(to.IP.String(), "0"))
		return err
	}); err != nil {
		return 0, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(probeTimeout))
		io.Copy(c, c)
	}()
	start := time.Now()
	var c net.Conn
	if err := from.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), probeTimeout)
		return err
	}); err != nil {
		return 0, fmt.Errorf("tcp %s -> %s: %w", from.Name, to.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeTimeout))
	if _, err := c.Write(msg); err != nil {
		return 0, fmt.Errorf("tcp %s -> %s: write: %w", from.Name, to.Name, err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return 0, fmt.Errorf("tcp %s -> %s: read: %w", from.Name, to.Name, err)
	}
	if string(got) != string(msg) {
		return 0, fmt.Errorf("tcp %s -> %s: echo %q, sent %q", from.Name, to.Name, got, msg)
	}
	return time.Since(start), nil
}

// UDPEcho sends a datagram from one pod to an echo server in another and
// waits for the reply, checking it came from the server's address.
func UDPEcho(from, to *Pod, msg []byte) (time.Duration, error) {
	var srv, cli net.PacketConn
	if err := to.Do(func() (err error) {
		srv, err = net.ListenPacket("udp4", net.JoinHostPort(to.IP.String(), "0"))
		return err
	}); err != nil {
		return 0, err
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 65536)
		srv.SetDeadline(time.Now().Add(probeTimeout))
		n, addr, err := srv.ReadFrom(buf)
		if err == nil {
			srv.WriteTo(buf[:n], addr)
		}
	}()
	if err := from.Do(func() (err error) {
		cli, err = net.ListenPacket("udp4", net.JoinHostPort(from.IP.String(), "0"))
		return err
	}); err != nil {
		return 0, err
	}
	defer cli.Close()
	start := time.Now()
	cli.SetDeadline(time.Now().Add(probeTimeout))
	if _, err := cli.WriteTo(msg, srv.LocalAddr()); err != nil {
		return 0, fmt.Errorf("udp %s -> %s: %w", from.Name, to.Name, err)
	}
	buf := make([]byte, 65536)
	n, addr, err := cli.ReadFrom(buf)
	if err != nil {
		return 0, fmt.Errorf("udp %s -> %s: no reply: %w", from.Name, to.Name, err)
	}
	if string(buf[:n]) != string(msg) || addr.String() != srv.LocalAddr().String() {
		return 0, fmt.Errorf("udp %s -> %s: reply %q from %s", from.Name, to.Name, buf[:n], addr)
	}
	return time.Since(start), nil
}

// SendSpoofedUDP sends, from inside pod from, one UDP datagram whose IPv4
// source is src instead of the pod's own address: the datapath must drop it.
func SendSpoofedUDP(from *Pod, src, dst netip.Addr, port uint16, payload []byte) error {
	return SendRawUDP(from.Do, src, dst, port, payload)
}

// SendRawUDP sends one UDP datagram from source port 40000 to dst:port,
// built by hand with the IPv4 source src whatever the sender's address,
// on a raw socket in the namespace do runs in (Pod.Do, Outside.Do,
// Node.Do). The datagram has no UDP checksum (0: none, allowed over IPv4).
func SendRawUDP(do func(func() error) error, src, dst netip.Addr, port uint16, payload []byte) error {
	if !src.Is4() || !dst.Is4() {
		return errors.New("raw UDP: IPv4 addresses only")
	}
	pkt := make([]byte, 28+len(payload))
	ip := pkt[:20]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(pkt)))
	ip[8], ip[9] = 64, unix.IPPROTO_UDP
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], csum.Checksum(ip, 0))
	udp := pkt[20:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	return do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: d})
	})
}
