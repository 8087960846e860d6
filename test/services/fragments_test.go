package services_test

import (
	"context"
	"crypto/rand"
	"net"
	"net/netip"
	"testing"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/services"
)

// echoUDP runs sim.ServeUDPEcho on addr for the rest of the test.
func echoUDP(t *testing.T, do func(func() error) error, addr string) <-chan sim.Datagram {
	t.Helper()
	pc, got, err := sim.ServeUDPEcho(do, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return got
}

func packetCounts(t *testing.T, n *sim.Node) sim.PacketCounts {
	t.Helper()
	c, err := n.PacketCounts()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Datagrams larger than the MTU travel as IP fragments, and only the first
// fragment carries the ports a frontend is recognised by: the datapath
// remembers what the first fragment became and gives the later ones the
// same addresses (bpf/lib/frag.h). One 8,000-byte UDP datagram (six
// fragments at the MTU of 1500) through each kind of frontend must arrive
// whole at the backend, from the client's own address, and the backend's
// 8,000-byte echo must come back whole from the frontend: the client's
// socket is connected to the frontend, so the kernel would not deliver an
// answer from any other address. /proc/net/snmp on both sides shows that
// both datagrams were fragmented and reassembled.
func TestFragmentedUDPThroughServices(t *testing.T) {
	p := newFarPath(t, "svcfrag", "10.216.0.0/24", 248)
	node, m, remote := p.node, p.m, p.far
	nodeIP, outside := node.Outside.NodeIP, node.Outside
	backend, client := addPod(t, node, "backend"), addPod(t, node, "client")
	podEcho := echoUDP(t, backend.Do, net.JoinHostPort(backend.IP.String(), "8080"))
	nodeEcho := echoUDP(t, node.Do, net.JoinHostPort(nodeIP.String(), "5353"))
	remoteEcho := echoUDP(t, remote.Do, net.JoinHostPort(remote.IP.String(), "5353"))
	svcs := []services.Service{{
		Namespace: "e2e", Name: "big", Type: services.TypeNodePort,
		ClusterIP: netip.MustParseAddr("10.96.0.40"),
		Ports:     []services.Port{{Protocol: services.ProtocolUDP, Port: 80, TargetPort: 8080, NodePort: 30080}},
		Backends:  backendsOf(backend),
	}, {
		Namespace: "e2e", Name: "big-on-node",
		ClusterIP: netip.MustParseAddr("10.96.0.41"),
		Ports:     []services.Port{{Protocol: services.ProtocolUDP, Port: 53, TargetPort: 5353}},
		Backends:  []services.Backend{{IP: nodeIP, Ready: true, Local: true}},
	}, {
		Namespace: "e2e", Name: "big-remote",
		ClusterIP: netip.MustParseAddr("10.96.0.42"),
		Ports:     []services.Port{{Protocol: services.ProtocolUDP, Port: 53, TargetPort: 5353}},
		Backends:  []services.Backend{{IP: remote.IP, Ready: true}},
	}}
	if _, err := m.Apply(context.Background(), svcs); err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 8000)
	rand.Read(msg)

	for _, tc := range []struct {
		name           string
		client, server func(func() error) error
		got            <-chan sim.Datagram
		clientIP       netip.Addr
		frontend       string
	}{
		// from_pod translates the request's fragments and delivers them
		// into the backend; the echo's come back the same way, with the
		// frontend as their source.
		{"ClusterIP to a pod", client.Do, backend.Do, podEcho, client.IP, "10.96.0.40:80"},
		// The backend reaching itself: from_pod gives the request the
		// frontend as source too, so the echo comes back through it.
		{"ClusterIP to the client itself", backend.Do, backend.Do, podEcho, netip.MustParseAddr("10.96.0.40"), "10.96.0.40:80"},
		// from_pod hands the request's fragments to the stack, which
		// reassembles them for the node's socket; the stack fragments the
		// node's echo, and to_pod gives each fragment the frontend.
		{"ClusterIP to the node's address", client.Do, node.Do, nodeEcho, client.IP, "10.96.0.41:53"},
		// from_pod hands the request's fragments to the stack, which
		// routes them out of the uplink to the remote host; from_netdev
		// gives the echo's fragments the frontend and delivers them.
		{"ClusterIP to a remote host", client.Do, remote.Do, remoteEcho, client.IP, "10.96.0.42:53"},
		// XDP leaves fragments to from_netdev, which translates them into
		// the pod; from_pod routes the echo's fragments out by FIB, with
		// the node's address and NodePort as their source.
		{"NodePort from outside", outside.Do, backend.Do, podEcho, outside.IP, net.JoinHostPort(nodeIP.String(), "30080")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := packetCounts(t, node)
			rt, err := sim.RoundTripUDP(tc.client, tc.server, tc.got, tc.frontend, msg)
			if err != nil {
				t.Fatalf("%d bytes to %s: %v (%v)", len(msg), tc.frontend, err, rt)
			}
			if rt.Seen.Addr() != tc.clientIP {
				t.Errorf("the backend saw the datagram from %s, want the client's own %s", rt.Seen, tc.clientIP)
			}
			if err := rt.Fragmented(); err != nil {
				t.Errorf("%v: this test shows nothing", err)
			}
			t.Logf("%d bytes each way through %s: %v; podpath counted %s", len(msg), tc.frontend, rt, packetCounts(t, node).Since(before))
		})
	}
	if drops := dropCounters(t, node); drops != "" {
		t.Errorf("drops:%s", drops)
	}
}
