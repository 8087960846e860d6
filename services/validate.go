package services

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by every error about the desired state itself, as
// opposed to the node: nothing was changed.
var ErrInvalid = errors.New("invalid services")

// ErrNotFound means no service has the given namespace and name.
var ErrNotFound = errors.New("service not found")

// ErrExists means a service of that namespace and name exists already.
var ErrExists = errors.New("service exists")

// FieldError is one problem with one field of one service.
type FieldError struct {
	Service string // namespace/name, or "services[i]" when unnamed
	Field   string // Kubernetes-style path: "ports[0].nodePort"
	Detail  string
	// Other names the service a conflict is with, if any.
	Other string
}

func (e FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("service %s: %s", e.Service, e.Detail)
	}
	return fmt.Sprintf("service %s: %s: %s", e.Service, e.Field, e.Detail)
}

// ValidationError lists every problem found in a desired state. Nothing
// is written when there is one.
type ValidationError struct{ Errors []FieldError }

func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		lines[i] = fe.Error()
	}
	if len(lines) == 1 {
		return lines[0]
	}
	return fmt.Sprintf("%d problems:\n  %s", len(lines), strings.Join(lines, "\n  "))
}

func (e *ValidationError) Unwrap() error { return ErrInvalid }

// PortRange is an inclusive range of ports, such as the node-port range.
type PortRange struct{ Min, Max uint16 }

// DefaultNodePortRange is Kubernetes' default --service-node-port-range.
var DefaultNodePortRange = PortRange{30000, 32767}

// ParsePortRange reads "30000-32767".
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return PortRange{}, fmt.Errorf("port range %q: want MIN-MAX", s)
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || a == 0 || a > b {
		return PortRange{}, fmt.Errorf("port range %q: want MIN-MAX with 1 <= MIN <= MAX <= 65535", s)
	}
	return PortRange{uint16(a), uint16(b)}, nil
}

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

// Contains tells whether p is in the range.
func (r PortRange) Contains(p int32) bool { return p >= int32(r.Min) && p <= int32(r.Max) }

// isDNSLabel tells whether s is an RFC 1123 label (namespaces): lower-case
// letters, digits and '-', alphanumeric at both ends, at most 63 long. With
// letterFirst, an RFC 1035 label (service names): a letter first.
func isDNSLabel(s string, letterFirst bool) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	if letterFirst && (s[0] < 'a' || s[0] > 'z') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// maxSlots is the most active backends one frontend can have: svc_info's
// backend count is 16 bits.
const maxSlots = 65535

// validator collects the problems of a whole desired state.
type validator struct {
	errs     []FieldError
	nodePort PortRange
}

func (v *validator) add(svc, field, format string, args ...any) {
	v.errs = append(v.errs, FieldError{Service: svc, Field: field, Detail: fmt.Sprintf(format, args...)})
}

func (v *validator) err() error {
	if len(v.errs) == 0 {
		return nil
	}
	return &ValidationError{Errors: v.errs}
}

// validate checks normalized services one by one and against each other:
// names, addresses, ports, policies, and that no two frontends collide.
func validate(desired []Service, nodePorts PortRange, extra []FieldError) error {
	v := &validator{nodePort: nodePorts, errs: extra}
	names := map[string]int{}
	for i := range desired {
		s := &desired[i]
		id := s.Key()
		if s.Name == "" {
			id = fmt.Sprintf("services[%d]", i)
		}
		if j, dup := names[id]; dup && s.Name != "" {
			v.add(id, "", "defined twice (services[%d] and services[%d])", j, i)
			continue
		}
		names[id] = i
		v.service(id, s)
	}
	v.frontendConflicts(desired)
	return v.err()
}

func (v *validator) service(id string, s *Service) {
	switch {
	case s.Name == "":
		v.add(id, "name", "required")
	case !isDNSLabel(s.Name, true):
		v.add(id, "name", "%q must be a DNS label: lower-case letters, digits and '-', starting with a letter, at most 63 characters", s.Name)
	}
	if !isDNSLabel(s.Namespace, false) {
		v.add(id, "namespace", "%q must be a DNS label: lower-case letters, digits and '-', at most 63 characters", s.Namespace)
	}
	switch s.Type {
	case TypeClusterIP, TypeNodePort, TypeLoadBalancer:
	case TypeHostPort:
		if s.ClusterIP.IsValid() || len(s.ExternalIPs) > 0 || len(s.LoadBalancerIPs) > 0 {
			v.add(id, "type", "a HostPort service has no clusterIP, externalIPs or loadBalancerIPs")
		}
		if s.HostIP.IsValid() {
			if msg := unicastProblem(s.HostIP); msg != "" {
				v.add(id, "hostIP", "%s", msg)
			}
		}
	case "ExternalName":
		v.add(id, "type", "ExternalName services are DNS aliases and have nothing to load-balance: not supported")
	default:
		v.add(id, "type", "%q: want ClusterIP, NodePort, LoadBalancer or HostPort", s.Type)
	}
	if s.ClusterIP.IsValid() {
		if msg := unicastProblem(s.ClusterIP); msg != "" {
			v.add(id, "clusterIP", "%s", msg)
		}
	} else if s.Type == TypeClusterIP {
		v.add(id, "clusterIP", "required for type ClusterIP")
	}
	for i, a := range s.ExternalIPs {
		if msg := unicastProblem(a); msg != "" {
			v.add(id, fmt.Sprintf("externalIPs[%d]", i), "%s", msg)
		}
	}
	for i, a := range s.LoadBalancerIPs {
		if msg := unicastProblem(a); msg != "" {
			v.add(id, fmt.Sprintf("loadBalancerIPs[%d]", i), "%s", msg)
		}
	}
	if s.HostIP.IsValid() && s.Type != TypeHostPort {
		v.add(id, "hostIP", "only for type HostPort (this service is %s)", s.Type)
	}
	if len(s.LoadBalancerIPs) > 0 && s.Type != TypeLoadBalancer {
		v.add(id, "loadBalancerIPs", "only for type LoadBalancer (this service is %s)", s.Type)
	}
	v.ports(id, s)
	switch s.SessionAffinity {
	case AffinityNone:
		if s.AffinityTimeout != 0 {
			v.add(id, "affinityTimeoutSeconds", "only with sessionAffinity ClientIP")
		}
	case AffinityClientIP:
		if s.AffinityTimeout < 1 || s.AffinityTimeout > MaxAffinityTimeout {
			v.add(id, "affinityTimeoutSeconds", "%d out of range 1-%d", s.AffinityTimeout, MaxAffinityTimeout)
		}
	default:
		v.add(id, "sessionAffinity", "%q: want None or ClientIP", s.SessionAffinity)
	}
	switch s.ExternalTrafficPolicy {
	case TrafficPolicyCluster:
	case TrafficPolicyLocal:
		if s.Type == TypeClusterIP && len(s.ExternalIPs) == 0 {
			v.add(id, "externalTrafficPolicy", "Local needs traffic from outside: type NodePort or LoadBalancer, or externalIPs")
		}
	default:
		v.add(id, "externalTrafficPolicy", "%q: want Cluster or Local", s.ExternalTrafficPolicy)
	}
	switch s.InternalTrafficPolicy {
	case TrafficPolicyCluster, TrafficPolicyLocal:
	default:
		v.add(id, "internalTrafficPolicy", "%q: want Cluster or Local", s.InternalTrafficPolicy)
	}
	switch s.Algorithm {
	case AlgorithmRandom, AlgorithmRoundRobin, AlgorithmMaglev:
	default:
		v.add(id, "algorithm", "%q: want random, round-robin or maglev", s.Algorithm)
	}
	active := 0
	for i, b := range s.Backends {
		field := func() string { return fmt.Sprintf("backends[%d].ip", i) }
		if !b.IP.IsValid() {
			v.add(id, field(), "missing or not an IP address")
			continue
		}
		if msg := unicastProblem(b.IP); msg != "" {
			v.add(id, field(), "%s", msg)
		}
		if i > 0 && s.Backends[i-1].IP == b.IP {
			v.add(id, field(), "%s listed twice", b.IP)
		}
		if b.Ports != nil && len(b.Ports) != len(s.Ports) {
			v.add(id, fmt.Sprintf("backends[%d].ports", i), "%d ports for a service of %d: want one per service port (0: not served)", len(b.Ports), len(s.Ports))
		}
		for j, p := range b.Ports {
			if p < 0 || p > 65535 {
				v.add(id, fmt.Sprintf("backends[%d].ports[%d]", i, j), "%d out of range 0-65535", p)
			}
		}
		if b.Active() {
			active++
		}
	}
	if active > maxSlots {
		v.add(id, "backends", "%d active backends; a frontend holds at most %d", active, maxSlots)
	}
}

func (v *validator) ports(id string, s *Service) {
	if len(s.Ports) == 0 {
		v.add(id, "ports", "at least one port is required")
		return
	}
	type portProto struct {
		port  int32
		proto Protocol
	}
	var (
		names map[string]bool
		seen  = make(map[portProto]int, len(s.Ports))
	)
	for i, p := range s.Ports {
		f := "ports[" + strconv.Itoa(i) + "]"
		if len(s.Ports) > 1 && p.Name == "" {
			v.add(id, f+".name", "required when a service has more than one port")
		}
		if p.Name != "" {
			if names[p.Name] {
				v.add(id, f+".name", "%q used twice", p.Name)
			}
			if names == nil {
				names = map[string]bool{}
			}
			names[p.Name] = true
		}
		switch p.Protocol {
		case ProtocolTCP, ProtocolUDP:
		case "SCTP":
			v.add(id, f+".protocol", "SCTP is not supported: want TCP or UDP")
		default:
			v.add(id, f+".protocol", "%q: want TCP or UDP", p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			v.add(id, f+".port", "%d out of range 1-65535", p.Port)
		}
		if (p.TargetPort < 1 || p.TargetPort > 65535) && (p.TargetPort != p.Port || p.Port >= 1 && p.Port <= 65535) {
			v.add(id, f+".targetPort", "%d out of range 1-65535", p.TargetPort)
		}
		pp := portProto{p.Port, p.Protocol}
		if j, dup := seen[pp]; dup {
			v.add(id, f, "%d/%s already defined by ports[%d]", p.Port, p.Protocol, j)
		}
		seen[pp] = i
		switch {
		case p.NodePort == 0:
		case s.Type == TypeClusterIP || s.Type == TypeHostPort:
			v.add(id, f+".nodePort", "only for types NodePort and LoadBalancer")
		case !v.nodePort.Contains(p.NodePort):
			v.add(id, f+".nodePort", "%d outside the node-port range %s", p.NodePort, v.nodePort)
		}
	}
}

// unicastProblem says what is wrong with a as a service or backend address.
func unicastProblem(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "not an IP address"
	case a.Is6():
		return fmt.Sprintf("%s: IPv6 is not supported yet (IPv4 only)", a)
	case !a.IsGlobalUnicast():
		return fmt.Sprintf("%s is not a unicast address (unspecified, loopback, link-local, multicast and broadcast are not allowed)", a)
	}
	return ""
}

// frontendConflicts reports two frontends (of one or two services) on the
// same address, port and protocol. Node ports are on the wildcard address.
func (v *validator) frontendConflicts(desired []Service) {
	// claim is who holds a frontend: a service, and which of its fields
	// ("externalIPs" and index 2 is externalIPs[2]).
	type claim struct {
		svc    int
		field  string
		index  int
		suffix string
	}
	type where struct {
		addr  netip.Addr
		port  int32
		proto Protocol
	}
	name := func(c claim) string {
		if c.index < 0 {
			return c.field
		}
		return fmt.Sprintf("%s[%d]%s", c.field, c.index, c.suffix)
	}
	owners := make(map[where]claim, len(desired))
	for i := range desired {
		s := &desired[i]
		for pi, p := range s.Ports {
			check := func(addr netip.Addr, port int32, c claim) {
				if !addr.IsValid() || port == 0 {
					return
				}
				w := where{addr, port, p.Protocol}
				prev, taken := owners[w]
				if !taken {
					owners[w] = c
					return
				}
				k := fmt.Sprintf("%s/%s", netip.AddrPortFrom(addr, uint16(port)), p.Protocol)
				if prev.svc == i {
					v.add(s.Key(), fmt.Sprintf("ports[%d]", pi), "frontend %s claimed twice (%s and %s)", k, name(prev), name(c))
				} else {
					v.add(s.Key(), fmt.Sprintf("ports[%d]", pi), "frontend %s (%s) is already service %s's (%s)", k, name(c), desired[prev.svc].Key(), name(prev))
					v.errs[len(v.errs)-1].Other = desired[prev.svc].Key()
				}
			}
			check(s.ClusterIP, p.Port, claim{i, "clusterIP", -1, ""})
			for j, a := range s.ExternalIPs {
				check(a, p.Port, claim{i, "externalIPs", j, ""})
			}
			for j, a := range s.LoadBalancerIPs {
				check(a, p.Port, claim{i, "loadBalancerIPs", j, ""})
			}
			switch s.Type {
			case TypeNodePort, TypeLoadBalancer:
				check(netip.IPv4Unspecified(), p.NodePort, claim{i, "ports", pi, ".nodePort"})
			case TypeHostPort:
				check(s.hostAddr(), p.Port, claim{i, "ports", pi, ".port"})
			}
		}
	}
}

// allocateNodePorts gives every port of a NodePort or LoadBalancer service
// that has none a node port: the one it had before if still free, else the
// lowest free one in the range. prev maps nodePortKey to the previous
// allocation. It returns the ports it could not allocate.
func allocateNodePorts(desired []Service, prev map[string]int32, r PortRange) []FieldError {
	v := &validator{}
	taken := map[int32]bool{}
	for i := range desired {
		for _, p := range desired[i].Ports {
			if p.NodePort != 0 {
				taken[p.NodePort] = true
			}
		}
	}
	// Earlier allocations first, so a service keeps its port even when a
	// new service comes before it in the list.
	next := int32(r.Min)
	for pass := 0; pass < 2; pass++ {
		for i := range desired {
			s := &desired[i]
			if s.Type != TypeNodePort && s.Type != TypeLoadBalancer || s.ExplicitNodePorts {
				continue
			}
			for pi := range s.Ports {
				p := &s.Ports[pi]
				if p.NodePort != 0 {
					continue
				}
				if pass == 0 {
					if old, had := prev[nodePortKey(s, p)]; had && r.Contains(old) && !taken[old] {
						p.NodePort = old
						taken[old] = true
					}
					continue
				}
				for ; next <= int32(r.Max) && taken[next]; next++ {
				}
				if next > int32(r.Max) {
					v.add(s.Key(), fmt.Sprintf("ports[%d].nodePort", pi), "no free node port left in %s", r)
					continue
				}
				p.NodePort = next
				taken[next] = true
			}
		}
	}
	return v.errs
}

func nodePortKey(s *Service, p *Port) string {
	return fmt.Sprintf("%s %d/%s", s.Key(), p.Port, p.Protocol)
}
