package services_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
)

// A Service whose backend is the node's own address, as the `kubernetes`
// Service is (10.96.0.1:443 -> the API server on the node's address:6443)
// and as any Service in front of hostNetwork pods is. A TCP and a UDP
// server listen on the node's uplink address in the node's namespace; a
// pod reaches them through the ClusterIP, and through a NodePort on that
// same address. from_pod sends the request to the node's address and the
// stack delivers it locally; the node's answers are routed by the stack
// into the pod's veth, where to_pod restores the frontend as their source.
// Without to_pod the TCP handshake never completes (the SYN-ACK comes from
// the node's address:6443, which the pod never connected to) and the
// connected UDP socket never sees an answer.
func TestNodeAddressBackend(t *testing.T) {
	node, err := sim.NewNode("svcnode", netip.MustParsePrefix("10.214.0.0/24"),
		nodeOptions(t, sim.WithUplink(netip.MustParsePrefix("10.252.0.1/24"), netip.MustParsePrefix("10.252.0.2/24")))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := node.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	m, err := services.Open(node.PinRoot, node.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	nodeIP := node.Outside.NodeIP
	serveIn(t, node.Do, "node", net.JoinHostPort(nodeIP.String(), "6443"), net.JoinHostPort(nodeIP.String(), "5353"))
	client := addPod(t, node, "client")

	kubernetes := services.Service{
		Namespace: "default", Name: "kubernetes", Type: services.TypeNodePort,
		ClusterIP: netip.MustParseAddr("10.96.0.1"),
		Ports: []services.Port{
			{Name: "https", Port: 443, TargetPort: 6443, NodePort: 30443},
			{Name: "dns", Protocol: services.ProtocolUDP, Port: 53, TargetPort: 5353, NodePort: 30053},
		},
		Backends: []services.Backend{{IP: nodeIP, Ready: true, Local: true}},
	}
	if _, err := m.Apply(context.Background(), []services.Service{kubernetes}); err != nil {
		t.Fatal(err)
	}
	before := toPodReplies(t, node)

	for _, fe := range []struct{ name, tcp, udp string }{
		{"ClusterIP", "10.96.0.1:443", "10.96.0.1:53"},
		{"NodePort on the node's address", net.JoinHostPort(nodeIP.String(), "30443"), net.JoinHostPort(nodeIP.String(), "30053")},
	} {
		t.Run(fe.name+" TCP", func(t *testing.T) {
			for i := range 5 {
				c, err := dial(client, fe.tcp, 3*time.Second)
				if err != nil {
					t.Fatalf("connection %d to %s: %v", i, fe.tcp, err)
				}
				if c.backend != "node" || c.client != client.IP.String() {
					t.Errorf("reached %s seeing client %s, want the node seeing the pod %s", c.backend, c.client, client.IP)
				}
				if got := c.RemoteAddr().String(); got != fe.tcp {
					t.Errorf("connected to %s, want %s", got, fe.tcp)
				}
				if err := c.echo("hello"); err != nil {
					t.Errorf("echo: %v", err)
				}
				c.Close()
			}
		})
		t.Run(fe.name+" UDP", func(t *testing.T) {
			for i := range 5 {
				if err := udpQuery(client, fe.udp); err != nil {
					t.Fatalf("datagram %d: %v", i, err)
				}
			}
		})
	}

	if after := toPodReplies(t, node); after <= before {
		t.Errorf("to_pod/svc_reply counted %d packets, %d before: the answers did not come through to_pod", after, before)
	}
	if drops := dropCounters(t, node); drops != "" {
		t.Errorf("drops:%s", drops)
	}

	// A pod connected by a build without to_pod (only from_pod on its veth)
	// cannot reach the node through the Service; `podpath node init` of
	// the new build, the upgrade path, attaches to_pod to its veth.
	t.Run("upgrade attaches to_pod to existing pods", func(t *testing.T) {
		veth := cni.HostVethName(client.ContainerID, sim.IfName)
		if err := node.Do(func() error { return loader.DetachTC(node.PinRoot, maps.ProgToPod, veth, loader.Egress) }); err != nil {
			t.Fatal(err)
		}
		if err := udpQuery(client, "10.96.0.1:53"); err == nil {
			t.Fatal("the Service answered through a veth without to_pod: this test shows nothing")
		}
		cfg, err := loader.ReadNodeConfig(node.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		if err := node.Do(func() error { return loader.Init(cfg) }); err != nil {
			t.Fatal(err)
		}
		if err := udpQuery(client, "10.96.0.1:53"); err != nil {
			t.Fatalf("after node init: %v", err)
		}
		if _, _, err := request(client, "10.96.0.1:443"); err != nil {
			t.Fatalf("after node init: %v", err)
		}
	})
}

// udpQuery sends one datagram from pod p on a connected socket, as a
// resolver does: the kernel hands it only answers from addr itself.
func udpQuery(p *sim.Pod, addr string) error {
	return p.Do(func() error {
		c, err := net.Dial("udp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("no answer from %s: %w", addr, err)
		}
		f := strings.Fields(string(buf[:n]))
		if len(f) != 3 || f[0] != "node" || f[1] != p.IP.String() || f[2] != "ping" {
			return fmt.Errorf("answer %q, want the node seeing %s", buf[:n], p.IP)
		}
		return nil
	})
}

func toPodReplies(t *testing.T, n *sim.Node) uint64 {
	t.Helper()
	v, err := n.Packets(maps.HookToPod, maps.ReasonSvcReply)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
