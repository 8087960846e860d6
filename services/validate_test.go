package services

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podpath/podpath/loader"
)

// Every kind of invalid desired state is refused with an error naming the
// service and field, and changes nothing: maps and services.state are as
// they were.
func TestValidationChangesNothing(t *testing.T) {
	m := newTestManager(t)
	good := []Service{
		clusterIP("web", "10.96.0.10", "10.0.0.1", "10.0.0.2"),
		{Namespace: "test", Name: "np", Type: TypeNodePort, ClusterIP: addr("10.96.0.11"),
			Ports: []Port{{Port: 80, NodePort: 30080}}, Backends: ready("10.0.0.3")},
	}
	if _, err := m.Apply(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	before := m.dump(t)
	stateBefore, err := os.ReadFile(filepath.Join(m.cfg.StateDir, stateFile))
	if err != nil {
		t.Fatal(err)
	}

	// with returns good plus the new services, with web changed by edit.
	with := func(edit func(*Service), extra ...Service) []Service {
		out := []Service{good[0], good[1]}
		out[0].Backends = append([]Backend(nil), good[0].Backends...)
		out[0].Ports = append([]Port(nil), good[0].Ports...)
		if edit != nil {
			edit(&out[0])
		}
		return append(out, extra...)
	}
	cases := []struct {
		name    string
		desired []Service
		want    string // in the error
	}{
		{"IPv6 cluster IP", with(func(s *Service) { s.ClusterIP = addr("fd00::10") }), "test/web: clusterIP: fd00::10: IPv6 is not supported yet"},
		{"multicast VIP", with(func(s *Service) { s.ClusterIP = addr("224.0.0.5") }), "clusterIP: 224.0.0.5 is not a unicast address"},
		{"loopback external IP", with(func(s *Service) { s.ExternalIPs = []netip.Addr{addr("127.0.0.1")} }), "externalIPs[0]: 127.0.0.1 is not a unicast address"},
		{"unspecified VIP", with(func(s *Service) { s.ClusterIP = addr("0.0.0.0") }), "clusterIP: 0.0.0.0 is not a unicast address"},
		{"missing cluster IP", with(func(s *Service) { s.ClusterIP = netip.Addr{} }), "clusterIP: required for type ClusterIP"},
		{"port 0", with(func(s *Service) { s.Ports[0].Port = 0 }), "ports[0].port: 0 out of range 1-65535"},
		{"port too big", with(func(s *Service) { s.Ports[0].Port = 70000 }), "ports[0].port: 70000 out of range"},
		{"target port too big", with(func(s *Service) { s.Ports[0].TargetPort = 65536 }), "ports[0].targetPort: 65536 out of range"},
		{"SCTP", with(func(s *Service) { s.Ports[0].Protocol = "SCTP" }), "ports[0].protocol: SCTP is not supported"},
		{"ICMP", with(func(s *Service) { s.Ports[0].Protocol = "ICMP" }), `ports[0].protocol: "ICMP": want TCP or UDP`},
		{"no ports", with(func(s *Service) { s.Ports = nil }), "ports: at least one port is required"},
		{"unnamed ports", with(func(s *Service) { s.Ports = append(s.Ports, Port{Port: 81}) }), "ports[0].name: required when a service has more than one port"},
		{"node port on ClusterIP", with(func(s *Service) { s.Ports[0].NodePort = 30001 }), "ports[0].nodePort: only for types NodePort and LoadBalancer"},
		{"node port out of range", with(func(s *Service) { s.Type = TypeNodePort; s.Ports[0].NodePort = 8080 }), "ports[0].nodePort: 8080 outside the node-port range 30000-32767"},
		{"duplicate name", with(nil, clusterIP("web", "10.96.0.99", "10.0.0.9")), "test/web: defined twice"},
		{"same frontend", with(nil, clusterIP("other", "10.96.0.10", "10.0.0.9")), "service test/web: ports[0]: frontend 10.96.0.10:80/TCP (clusterIP) is already service test/other's (clusterIP)"},
		{"same node port", with(nil, Service{Namespace: "test", Name: "np2", Type: TypeNodePort, Ports: []Port{{Port: 81, NodePort: 30080}}}),
			"frontend 0.0.0.0:30080/TCP (ports[0].nodePort) is already service test/np's"},
		{"external IP equals cluster IP", with(func(s *Service) { s.ExternalIPs = []netip.Addr{addr("10.96.0.10")} }), "frontend 10.96.0.10:80/TCP claimed twice (clusterIP and externalIPs[0])"},
		{"bad backend", with(func(s *Service) { s.Backends = append(s.Backends, Backend{IP: addr("255.255.255.255"), Ready: true}) }), "backends[2].ip: 255.255.255.255 is not a unicast address"},
		{"IPv6 backend", with(func(s *Service) { s.Backends = append(s.Backends, Backend{IP: addr("fd00::1"), Ready: true}) }), "IPv6 is not supported yet"},
		{"missing backend IP", with(func(s *Service) { s.Backends = append(s.Backends, Backend{Ready: true}) }), "backends[0].ip: missing or not an IP address"},
		{"duplicate backend", with(func(s *Service) { s.Backends = append(s.Backends, Backend{IP: addr("10.0.0.1"), Ready: true}) }), "10.0.0.1 listed twice"},
		{"affinity timeout without affinity", with(func(s *Service) { s.AffinityTimeout = 30 }), "affinityTimeoutSeconds: only with sessionAffinity ClientIP"},
		{"affinity timeout too long", with(func(s *Service) { s.SessionAffinity = AffinityClientIP; s.AffinityTimeout = 90000 }), "affinityTimeoutSeconds: 90000 out of range 1-86400"},
		{"unknown affinity", with(func(s *Service) { s.SessionAffinity = "Cookie" }), `sessionAffinity: "Cookie"`},
		{"unknown algorithm", with(func(s *Service) { s.Algorithm = "least-conn" }), `algorithm: "least-conn": want random, round-robin or maglev`},
		{"local policy on cluster IP", with(func(s *Service) { s.ExternalTrafficPolicy = TrafficPolicyLocal }), "externalTrafficPolicy: Local needs traffic from outside"},
		{"load-balancer IPs on NodePort", with(nil, Service{Namespace: "test", Name: "lb", Type: TypeNodePort, LoadBalancerIPs: []netip.Addr{addr("192.0.2.1")}, Ports: []Port{{Port: 80}}}),
			"loadBalancerIPs: only for type LoadBalancer"},
		{"ExternalName", with(nil, Service{Namespace: "test", Name: "ext", Type: "ExternalName", Ports: []Port{{Port: 80}}}), "ExternalName services are DNS aliases"},
		{"bad name", with(nil, clusterIP("Web_1", "10.96.0.50")), `name: "Web_1" must be a DNS label`},
		{"no name", with(nil, Service{ClusterIP: addr("10.96.0.51"), Ports: []Port{{Port: 80}}}), "services[0]: name: required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			writes := m.countWrites()
			_, err := m.Apply(context.Background(), tc.desired)
			if err == nil {
				t.Fatal("accepted")
			}
			var ve *ValidationError
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &ve) {
				t.Fatalf("error %v is not a ValidationError", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n%v\nwant it to contain %q", err, tc.want)
			}
			if writes.total() != 0 {
				t.Fatalf("wrote %v", writes)
			}
			if d := diffDumps(before, m.dump(t)); d != "" {
				t.Fatalf("maps changed:\n%s", d)
			}
			st, err := os.ReadFile(filepath.Join(m.cfg.StateDir, stateFile))
			if err != nil || string(st) != string(stateBefore) {
				t.Fatalf("services.state changed (%v)", err)
			}
		})
	}
}

// Every problem of a desired state is reported at once.
func TestValidationReportsAll(t *testing.T) {
	s := clusterIP("web", "fd00::1")
	s.Ports[0].Port = 0
	s.Algorithm = "fastest"
	err := validate([]Service{s.normalize()}, DefaultNodePortRange, nil)
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Errors) != 3 {
		t.Fatalf("got %v, want 3 problems", err)
	}
}

// A desired state that does not fit the node's maps is refused whole.
func TestCapacityChangesNothing(t *testing.T) {
	n := newTestNode(t, func(c *loader.Config) { c.MaxServices = 16 })
	m := n.open(t)
	var svcs []Service
	for i := range 15 {
		svcs = append(svcs, clusterIP(fmt.Sprintf("s%d", i), fmt.Sprintf("10.96.0.%d", i+1), "10.0.0.1"))
	}
	if _, err := m.Apply(context.Background(), svcs); err != nil {
		t.Fatalf("15 frontends in a map of 16 (ids 1-15): %v", err)
	}
	before := m.dump(t)
	svcs = append(svcs, clusterIP("s15", "10.96.0.16", "10.0.0.1"))
	_, err := m.Apply(context.Background(), svcs)
	if !errors.Is(err, ErrCapacity) || !strings.Contains(err.Error(), "16 frontends") {
		t.Fatalf("got %v, want a capacity error", err)
	}
	if d := diffDumps(before, m.dump(t)); d != "" {
		t.Fatalf("maps changed:\n%s", d)
	}
}
