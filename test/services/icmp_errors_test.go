package services_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
	"golang.org/x/sys/unix"
)

// snmp reads /proc/net/snmp of the namespace do runs in.
func snmp(t *testing.T, do func(func() error) error) map[string]int64 {
	t.Helper()
	c, err := sim.SNMP(do)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A UDP client of a ClusterIP whose backend has nothing listening on the
// target port is told so at once: the backend's stack answers with ICMP
// port unreachable about the translated datagram (client -> backend:port),
// and the datapath gives that error the frontend back (in its quote, and as
// its source where the backend sent it), so the kernel matches it to the
// client's socket, connected to the frontend, and the read fails with
// ECONNREFUSED. Untranslated, the quote names a peer the client never
// talked to, no socket matches, and the read waits out its timeout.
func TestPortUnreachableThroughClusterIP(t *testing.T) {
	node, m := newNode(t, "svcunreach", "10.217.0.0/24",
		sim.WithUplink(netip.MustParsePrefix("10.247.0.1/24"), netip.MustParsePrefix("10.247.0.2/24")))
	nodeIP := node.Outside.NodeIP
	closed, client := addPod(t, node, "closed"), addPod(t, node, "client")
	svcs := []services.Service{{
		Namespace: "e2e", Name: "closed",
		ClusterIP: netip.MustParseAddr("10.96.0.50"),
		Ports:     []services.Port{{Protocol: services.ProtocolUDP, Port: 80, TargetPort: 8080}},
		Backends:  backendsOf(closed),
	}, {
		Namespace: "e2e", Name: "closed-on-node",
		ClusterIP: netip.MustParseAddr("10.96.0.51"),
		Ports:     []services.Port{{Protocol: services.ProtocolUDP, Port: 53, TargetPort: 5399}},
		Backends:  []services.Backend{{IP: nodeIP, Ready: true, Local: true}},
	}}
	if _, err := m.Apply(context.Background(), svcs); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		frontend string
		backend  func(func() error) error
	}{
		// The pod's error passes from_pod, which delivers it to the client.
		{"pod backend", "10.96.0.50:80", closed.Do},
		// The node's error is routed by the stack into the client's veth,
		// where to_pod translates it.
		{"node address backend", "10.96.0.51:53", node.Do},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sent0, got0 := snmp(t, tc.backend), snmp(t, client.Do)
			rejects := counter(t, node, maps.ReasonSvcReject)
			before := packetCounts(t, node)
			start := time.Now()
			_, err := sim.ExchangeUDP(client.Do, tc.frontend, []byte("ping"), 3*time.Second)
			took := time.Since(start)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("datagram to %s, nothing listening behind it: %v, want connection refused", tc.frontend, err)
			}
			sent := snmp(t, tc.backend)["Icmp.OutDestUnreachs"] - sent0["Icmp.OutDestUnreachs"]
			got := snmp(t, client.Do)["Icmp.InDestUnreachs"] - got0["Icmp.InDestUnreachs"]
			if sent < 1 {
				t.Errorf("the backend sent no destination unreachable: this test shows nothing")
			}
			if n := counter(t, node, maps.ReasonSvcReject); n != rejects {
				t.Errorf("svc_reject %d -> %d: the datapath refused, not the backend", rejects, n)
			}
			t.Logf("%s refused in %v: the backend sent %d destination unreachable, the client received %d; podpath counted %s",
				tc.frontend, took.Round(time.Microsecond), sent, got, packetCounts(t, node).Since(before))
		})
	}
	if drops := dropCounters(t, node); drops != "" {
		t.Errorf("drops:%s", drops)
	}
}

// A traceroute through a ClusterIP whose backend is the far host (see
// newFarPath): datagrams with a TTL of 1 and 2 die at the node and at the
// router, which answer with ICMP time exceeded quoting client -> far host.
// The datapath must make the quote read client -> ClusterIP (to_pod for
// the node's error, from_netdev for the router's) for the client's socket,
// connected to the ClusterIP, to take the error; it reads the hop that sent
// it from the socket's error queue (IP_RECVERR), as traceroute does. With
// a TTL of 3 the far host answers, from the ClusterIP.
func TestTracerouteThroughClusterIP(t *testing.T) {
	p := newFarPath(t, "svctrace", "10.223.0.0/24", 239)
	echoUDP(t, p.far.Do, net.JoinHostPort(p.far.IP.String(), "5353"))
	vip := netip.MustParseAddr("10.96.0.62")
	if _, err := p.m.Apply(context.Background(), []services.Service{{
		Namespace: "e2e", Name: "far-udp",
		ClusterIP: vip,
		Ports:     []services.Port{{Protocol: services.ProtocolUDP, Port: 53, TargetPort: 5353}},
		Backends:  []services.Backend{{IP: p.far.IP, Ready: true}},
	}}); err != nil {
		t.Fatal(err)
	}
	client := addPod(t, p.node, "client")
	router := p.node.Outside
	frontend := net.JoinHostPort(vip.String(), "53")
	for ttl, tc := range []struct {
		name string
		do   func(func() error) error
		want netip.Addr
	}{
		{"node", p.node.Do, router.NodeIP},
		{"router", router.Do, router.IP},
		{"backend", nil, vip},
	} {
		ttl++
		var sent0 map[string]int64
		if tc.do != nil {
			sent0 = snmp(t, tc.do)
		}
		hop, err := hopAt(client, frontend, ttl)
		if err != nil {
			t.Fatalf("TTL %d: %v", ttl, err)
		}
		if hop != tc.want {
			t.Errorf("TTL %d: answered by %s, want the %s's %s", ttl, hop, tc.name, tc.want)
		}
		var sent int64
		if tc.do != nil {
			if sent = snmp(t, tc.do)["Icmp.OutTimeExcds"] - sent0["Icmp.OutTimeExcds"]; sent < 1 {
				t.Errorf("TTL %d: the %s sent no time exceeded", ttl, tc.name)
			}
		}
		t.Logf("TTL %d: %s (%s; time exceeded sent: %d)", ttl, hop, tc.name, sent)
	}
	if drops := dropCounters(t, p.node); drops != "" {
		t.Errorf("drops:%s", drops)
	}
}

// hopAt sends one datagram with the given TTL from pod p on a socket
// connected to addr and returns who answered: the sender of the time
// exceeded error the socket took, or addr itself when its answer came.
func hopAt(p *sim.Pod, addr string, ttl int) (netip.Addr, error) {
	var c net.Conn
	if err := p.Do(func() (err error) {
		c, err = net.Dial("udp4", addr)
		return err
	}); err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	raw, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		return netip.Addr{}, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, ttl)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1)
		}
	}); err != nil || serr != nil {
		return netip.Addr{}, errors.Join(err, serr)
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("probe")); err != nil {
		return netip.Addr{}, err
	}
	if _, err := c.Read(make([]byte, 64)); err == nil {
		return c.RemoteAddr().(*net.UDPAddr).AddrPort().Addr(), nil
	} else if !errors.Is(err, syscall.EHOSTUNREACH) {
		return netip.Addr{}, fmt.Errorf("neither an answer nor time exceeded: %w", err)
	}
	// The error's details wait in the error queue: struct
	// sock_extended_err, then the sender's struct sockaddr_in.
	oob := make([]byte, 128)
	var oobn int
	if err := raw.Read(func(fd uintptr) bool {
		_, oobn, _, _, serr = unix.Recvmsg(int(fd), make([]byte, 64), oob, unix.MSG_ERRQUEUE)
		return true
	}); err != nil || serr != nil {
		return netip.Addr{}, fmt.Errorf("error queue: %w", errors.Join(err, serr))
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return netip.Addr{}, err
	}
	for _, m := range msgs {
		ee := int(unsafe.Sizeof(unix.SockExtendedErr{}))
		if m.Header.Level != unix.IPPROTO_IP || m.Header.Type != unix.IP_RECVERR || len(m.Data) < ee+8 {
			continue
		}
		if origin, typ := m.Data[4], m.Data[5]; origin != unix.SO_EE_ORIGIN_ICMP || typ != 11 {
			return netip.Addr{}, fmt.Errorf("ICMP error of origin %d, type %d, want time exceeded", origin, typ)
		}
		return netip.AddrFrom4([4]byte(m.Data[ee+4 : ee+8])), nil
	}
	return netip.Addr{}, errors.New("no extended error in the error queue")
}
