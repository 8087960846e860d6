// Package services is podpath's service control plane: it takes the
// desired set of Kubernetes-style services (from the CLI, a declarative
// file, or later the Kubernetes API) and programs the datapath's service
// maps (bpf/lib/maps.h: services, svc_slots, backends, maglev, affinity)
// so that a packet never sees a half-written service. It also reads and
// flushes the connection tracking table those services fill.
package services

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ServiceType is how a service is exposed, as Kubernetes' spec.type.
type ServiceType string

// Service types. ExternalName is not a proxy concern and not supported.
// HostPort is not a Kubernetes service type: it is a pod's hostPort (the
// CNI portMappings capability, Docker's -p), each port's Port opened on
// HostIP (default: every node address) towards the backends' TargetPort.
const (
	TypeClusterIP    ServiceType = "ClusterIP"
	TypeNodePort     ServiceType = "NodePort"
	TypeLoadBalancer ServiceType = "LoadBalancer"
	TypeHostPort     ServiceType = "HostPort"
)

// Protocol is a port's L4 protocol.
type Protocol string

// Protocols the datapath translates.
const (
	ProtocolTCP Protocol = "TCP"
	ProtocolUDP Protocol = "UDP"
)

// SessionAffinity is Kubernetes' spec.sessionAffinity.
type SessionAffinity string

// Session affinities.
const (
	AffinityNone     SessionAffinity = "None"
	AffinityClientIP SessionAffinity = "ClientIP"
)

// TrafficPolicy is Kubernetes' spec.externalTrafficPolicy.
type TrafficPolicy string

// Traffic policies: Local sends traffic arriving from the network only to
// backends on this node (and keeps the client's address); Cluster to all.
const (
	TrafficPolicyCluster TrafficPolicy = "Cluster"
	TrafficPolicyLocal   TrafficPolicy = "Local"
)

// Algorithm is how a new flow picks among a frontend's active backends.
type Algorithm string

// Load-balancing algorithms (enum lb_algo in bpf/lib/maps.h).
const (
	AlgorithmRandom     Algorithm = "random"
	AlgorithmRoundRobin Algorithm = "round-robin"
	AlgorithmMaglev     Algorithm = "maglev"
)

// DefaultAffinityTimeout is Kubernetes' default ClientIP affinity timeout
// (sessionAffinityConfig.clientIP.timeoutSeconds), in seconds.
const DefaultAffinityTimeout = 10800

// MaxAffinityTimeout is the longest affinity Kubernetes accepts, in seconds.
const MaxAffinityTimeout = 86400

// DefaultNamespace is the namespace of a service that names none.
const DefaultNamespace = "default"

// Service is one service: its frontends (cluster IP, node ports, external
// and load-balancer IPs, each per port) and the backends behind them.
type Service struct {
	Namespace string      `json:"namespace"`
	Name      string      `json:"name"`
	Type      ServiceType `json:"type,omitempty"`
	// ClusterIP is reachable from pods and the node (internal scope only).
	ClusterIP netip.Addr `json:"clusterIP,omitzero"`
	// ExternalIPs and LoadBalancerIPs are reachable from pods, the node and
	// the network.
	ExternalIPs     []netip.Addr `json:"externalIPs,omitempty"`
	LoadBalancerIPs []netip.Addr `json:"loadBalancerIPs,omitempty"`
	// HostIP is the node address a HostPort service listens on; unset:
	// every address of the node.
	HostIP netip.Addr `json:"hostIP,omitzero"`
	Ports  []Port     `json:"ports"`
	// ExplicitNodePorts: node ports are as given and 0 means none, as when
	// Kubernetes allocates them (a LoadBalancer with
	// allocateLoadBalancerNodePorts false has none). Otherwise a NodePort
	// or LoadBalancer port without one is given one from the range.
	ExplicitNodePorts bool `json:"explicitNodePorts,omitempty"`
	// SessionAffinity ClientIP sends a client's new flows to the backend
	// its last flow went to, for AffinityTimeout seconds after that flow's
	// last new connection (default DefaultAffinityTimeout).
	SessionAffinity       SessionAffinity `json:"sessionAffinity,omitempty"`
	AffinityTimeout       int32           `json:"affinityTimeoutSeconds,omitempty"`
	ExternalTrafficPolicy TrafficPolicy   `json:"externalTrafficPolicy,omitempty"`
	// InternalTrafficPolicy Local sends traffic from pods and the node to
	// the cluster IP only to backends on this node (Kubernetes'
	// spec.internalTrafficPolicy); Cluster, the default, to all.
	InternalTrafficPolicy TrafficPolicy `json:"internalTrafficPolicy,omitempty"`
	Algorithm             Algorithm     `json:"algorithm,omitempty"`
	Backends              []Backend     `json:"backends,omitempty"`
}

// Port is one port of a service. A backend receives the port's traffic on
// TargetPort (default: Port).
type Port struct {
	Name       string   `json:"name,omitempty"`
	Protocol   Protocol `json:"protocol,omitempty"`
	Port       int32    `json:"port"`
	TargetPort int32    `json:"targetPort,omitempty"`
	// NodePort, for types NodePort and LoadBalancer, is the port on every
	// node address; 0 asks for one to be allocated from the node-port range.
	NodePort int32 `json:"nodePort,omitempty"`
}

// Backend is an endpoint of a service, as an EndpointSlice endpoint.
// Backends that are Ready and not Terminating receive new flows; when a
// frontend has none of those, the Serving Terminating ones do (KEP-1669),
// so a service whose pods are all shutting down keeps answering until the
// last one stops serving. The others keep the flows they have.
type Backend struct {
	IP netip.Addr `json:"ip"`
	// Ready is the endpoint's ready condition. In JSON and YAML an absent
	// "ready" means true, as Kubernetes reads an unknown condition.
	Ready       bool `json:"ready"`
	Terminating bool `json:"terminating,omitempty"`
	// Serving is the endpoint's serving condition: whether a terminating
	// endpoint still answers.
	Serving bool `json:"serving,omitempty"`
	// Local marks a backend on this node: with externalTrafficPolicy Local
	// only those get traffic arriving from the network, with
	// internalTrafficPolicy Local only those get the cluster IP's.
	Local bool `json:"local,omitempty"`
	// NodeName is the node the endpoint lives on, when known.
	NodeName string `json:"nodeName,omitempty"`
	// Ports, when set, is the backend's own port for each of the service's
	// ports, in order, overriding TargetPort; 0 means the backend does not
	// serve that port. Kubernetes resolves a named target port per
	// EndpointSlice, so pods of one service may listen on different ports.
	Ports []int32 `json:"ports,omitempty"`
}

// UnmarshalJSON reads a backend, defaulting ready to true, and accepts a
// bare address string as shorthand for a ready backend. Unknown fields are
// errors, as in the service around it.
func (b *Backend) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("backend %q: %w", s, err)
		}
		*b = Backend{IP: ip, Ready: true}
		return nil
	}
	type plain Backend
	v := plain{Ready: true}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return err
	}
	*b = Backend(v)
	return nil
}

// Active tells whether the backend takes new flows.
func (b Backend) Active() bool { return b.Ready && !b.Terminating }

// fallback tells whether the backend takes new flows when a frontend has
// no active backend: it is terminating but still serving.
func (b Backend) fallback() bool { return b.Terminating && b.Serving }

// targetPort is the port the backend receives port i's traffic on; 0 when
// it does not serve that port.
func (b *Backend) targetPort(i int, p *Port) int32 {
	if b.Ports == nil {
		return p.TargetPort
	}
	if i < len(b.Ports) {
		return b.Ports[i]
	}
	return 0
}

func (b *Backend) equal(o *Backend) bool {
	return b.IP == o.IP && b.Ready == o.Ready && b.Terminating == o.Terminating &&
		b.Serving == o.Serving && b.Local == o.Local && b.NodeName == o.NodeName &&
		slices.Equal(b.Ports, o.Ports)
}

// Key names a service: "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// ParseKey splits "namespace/name"; a bare name is in DefaultNamespace.
func ParseKey(s string) (namespace, name string, err error) {
	ns, n, ok := strings.Cut(s, "/")
	if !ok {
		ns, n = DefaultNamespace, s
	}
	if ns == "" || n == "" || strings.Contains(n, "/") {
		return "", "", fmt.Errorf("service %q: want NAMESPACE/NAME", s)
	}
	return ns, n, nil
}

// normalize fills Kubernetes' defaults and puts lists in a canonical order,
// so two descriptions of the same service compare equal. Node ports that
// are 0 stay 0 here: allocation needs the whole desired state.
func (s Service) normalize() Service {
	if s.Namespace == "" {
		s.Namespace = DefaultNamespace
	}
	if s.Type == "" {
		s.Type = TypeClusterIP
	}
	if s.SessionAffinity == "" {
		s.SessionAffinity = AffinityNone
	}
	if s.SessionAffinity == AffinityClientIP && s.AffinityTimeout == 0 {
		s.AffinityTimeout = DefaultAffinityTimeout
	}
	if s.ExternalTrafficPolicy == "" {
		s.ExternalTrafficPolicy = TrafficPolicyCluster
	}
	if s.InternalTrafficPolicy == "" {
		s.InternalTrafficPolicy = TrafficPolicyCluster
	}
	if s.Algorithm == "" {
		s.Algorithm = AlgorithmRandom
	}
	s.ClusterIP = s.ClusterIP.Unmap()
	s.ExternalIPs = unmapAll(s.ExternalIPs)
	s.LoadBalancerIPs = unmapAll(s.LoadBalancerIPs)
	ports := make([]Port, len(s.Ports))
	for i, p := range s.Ports {
		p.Protocol = Protocol(strings.ToUpper(string(p.Protocol)))
		if p.Protocol == "" {
			p.Protocol = ProtocolTCP
		}
		if p.TargetPort == 0 {
			p.TargetPort = p.Port
		}
		ports[i] = p
	}
	s.Ports = ports
	if len(s.Ports) == 0 {
		s.Ports = nil
	}
	if len(s.Backends) == 0 {
		s.Backends = nil
	} else {
		bs := make([]Backend, len(s.Backends))
		for i, b := range s.Backends {
			b.IP = b.IP.Unmap()
			if len(b.Ports) == 0 {
				b.Ports = nil
			}
			bs[i] = b
		}
		sortBackends(bs)
		s.Backends = bs
	}
	return s
}

func unmapAll(in []netip.Addr) []netip.Addr {
	if len(in) == 0 {
		return nil
	}
	out := make([]netip.Addr, len(in))
	for i, a := range in {
		out[i] = a.Unmap()
	}
	return out
}

func sortBackends(bs []Backend) {
	// Stable, so duplicates stay in input order for the error message.
	slices.SortStableFunc(bs, func(a, b Backend) int { return a.IP.Compare(b.IP) })
}

// equal compares two normalized services.
func (s *Service) equal(o *Service) bool {
	if s.Namespace != o.Namespace || s.Name != o.Name || s.Type != o.Type ||
		s.ClusterIP != o.ClusterIP || s.SessionAffinity != o.SessionAffinity ||
		s.AffinityTimeout != o.AffinityTimeout || s.ExternalTrafficPolicy != o.ExternalTrafficPolicy ||
		s.InternalTrafficPolicy != o.InternalTrafficPolicy || s.Algorithm != o.Algorithm ||
		s.ExplicitNodePorts != o.ExplicitNodePorts {
		return false
	}
	return sliceEqual(s.ExternalIPs, o.ExternalIPs) && sliceEqual(s.LoadBalancerIPs, o.LoadBalancerIPs) &&
		sliceEqual(s.Ports, o.Ports) &&
		slices.EqualFunc(s.Backends, o.Backends, func(a, b Backend) bool { return a.equal(&b) })
}

func sliceEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// hostAddr is the address a HostPort service's frontends are on: HostIP, or
// the wildcard that stands for every node address.
func (s *Service) hostAddr() netip.Addr {
	if s.HostIP.IsValid() {
		return s.HostIP
	}
	return netip.IPv4Unspecified()
}
