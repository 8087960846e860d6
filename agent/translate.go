package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/podpath/podpath/services"
)

// Labels and annotations the proxy reads, as kube-proxy does.
const (
	// LabelServiceProxyName marks a Service that another proxy serves:
	// kube-proxy and podpath leave it alone.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless marks the EndpointSlices of a headless Service.
	LabelHeadless = "service.kubernetes.io/headless"
	// AnnotationTriggerTime is when the change an EndpointSlice reflects
	// happened (set by the EndpointSlice controller); network programming
	// latency is measured from it.
	AnnotationTriggerTime = "endpoints.kubernetes.io/last-change-trigger-time"
	// AnnotationAlgorithm picks a Service's load-balancing algorithm:
	// random (default), round-robin or maglev.
	AnnotationAlgorithm = "service.podpath.io/algorithm"
)

// Reasons a Service, or a part of it, is not programmed (the "reason"
// label of podpath_agent_skipped).
const (
	SkipIPFamily = "ip-family"  // no IPv4 cluster IP (IPv6-only Service)
	SkipProtocol = "protocol"   // a port of a protocol podpath does not serve (SCTP)
	SkipNoPorts  = "no-ports"   // no port podpath can serve
	SkipInvalid  = "invalid"    // refused by validation (a node port outside the range, ...)
	SkipConflict = "conflict"   // a frontend already held by a hostPort or another Service
	SkipIPv6Part = "ipv6-parts" // IPv6 external or load-balancer IPs or endpoints, left out
)

// translated is what one Kubernetes Service becomes on this node.
type translated struct {
	// svc is the Service to program; ignored (headless, ExternalName) or
	// skipped Services have none.
	svc *services.Service
	// ignored: not a proxy concern at all (headless, ExternalName).
	ignored bool
	// skips lists why the Service or parts of it are not programmed.
	skips []skip
	// healthCheckNodePort and localEndpoints feed the health check
	// server of an externalTrafficPolicy Local Service.
	healthCheckNodePort int32
	localEndpoints      int
}

type skip struct{ reason, detail string }

// translate turns a Service and its EndpointSlices into the Service podpath
// programs, with kube-proxy's semantics: IPv4 only, TCP and UDP ports, one
// backend per endpoint address (merged across slices), named target ports
// resolved per slice, endpoint conditions kept for KEP-1669's fallback.
func translate(ks *corev1.Service, slices_ []*discoveryv1.EndpointSlice, nodeName string) translated {
	var t translated
	if ks.Spec.Type == corev1.ServiceTypeExternalName ||
		ks.Spec.ClusterIP == corev1.ClusterIPNone || ks.Spec.ClusterIP == "" {
		t.ignored = true
		return t
	}
	s := &services.Service{
		Namespace:         ks.Namespace,
		Name:              ks.Name,
		ExplicitNodePorts: true,
	}
	switch ks.Spec.Type {
	case corev1.ServiceTypeNodePort:
		s.Type = services.TypeNodePort
	case corev1.ServiceTypeLoadBalancer:
		s.Type = services.TypeLoadBalancer
	default:
		s.Type = services.TypeClusterIP
	}
	ips := ks.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{ks.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil && a.Is4() {
			s.ClusterIP = a
			break
		}
	}
	if !s.ClusterIP.IsValid() {
		t.skips = append(t.skips, skip{SkipIPFamily, fmt.Sprintf("no IPv4 cluster IP in %v: podpath serves IPv4", ips)})
		return t
	}
	var v6 []string
	for _, ip := range ks.Spec.ExternalIPs {
		a, err := netip.ParseAddr(ip)
		switch {
		case err != nil:
			t.skips = append(t.skips, skip{SkipInvalid, fmt.Sprintf("externalIP %q is not an address", ip)})
		case a.Is4():
			s.ExternalIPs = append(s.ExternalIPs, a)
		default:
			v6 = append(v6, ip)
		}
	}
	if s.Type == services.TypeLoadBalancer {
		for _, in := range ks.Status.LoadBalancer.Ingress {
			// An ingress in Proxy mode is a load balancer that proxies to
			// the node ports itself: packets never arrive for its IP.
			if in.IP == "" || in.IPMode != nil && *in.IPMode == corev1.LoadBalancerIPModeProxy {
				continue
			}
			a, err := netip.ParseAddr(in.IP)
			switch {
			case err != nil:
				t.skips = append(t.skips, skip{SkipInvalid, fmt.Sprintf("load-balancer ingress IP %q is not an address", in.IP)})
			case a.Is4():
				s.LoadBalancerIPs = append(s.LoadBalancerIPs, a)
			default:
				v6 = append(v6, in.IP)
			}
		}
	}

	for _, p := range ks.Spec.Ports {
		proto := services.Protocol(p.Protocol)
		if proto == "" {
			proto = services.ProtocolTCP
		}
		if proto != services.ProtocolTCP && proto != services.ProtocolUDP {
			t.skips = append(t.skips, skip{SkipProtocol, fmt.Sprintf("port %q (%d/%s): podpath serves TCP and UDP", p.Name, p.Port, p.Protocol)})
			continue
		}
		sp := services.Port{Name: p.Name, Protocol: proto, Port: p.Port, TargetPort: p.Port}
		if p.TargetPort.IntVal != 0 {
			sp.TargetPort = p.TargetPort.IntVal
		}
		if s.Type != services.TypeClusterIP {
			sp.NodePort = p.NodePort
		}
		s.Ports = append(s.Ports, sp)
	}
	if len(s.Ports) == 0 {
		t.skips = append(t.skips, skip{SkipNoPorts, "no TCP or UDP port"})
		return t
	}

	if ks.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		s.SessionAffinity = services.AffinityClientIP
		s.AffinityTimeout = services.DefaultAffinityTimeout
		if c := ks.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			s.AffinityTimeout = *c.ClientIP.TimeoutSeconds
		}
	}
	// Kubernetes keeps externalTrafficPolicy only where traffic can come
	// from outside: node ports, load balancers, external IPs.
	if ks.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal &&
		(s.Type != services.TypeClusterIP || len(s.ExternalIPs) > 0) {
		s.ExternalTrafficPolicy = services.TrafficPolicyLocal
		t.healthCheckNodePort = ks.Spec.HealthCheckNodePort
	}
	if p := ks.Spec.InternalTrafficPolicy; p != nil && *p == corev1.ServiceInternalTrafficPolicyLocal {
		s.InternalTrafficPolicy = services.TrafficPolicyLocal
	}
	if a, ok := ks.Annotations[AnnotationAlgorithm]; ok {
		s.Algorithm = services.Algorithm(a)
	}

	var v6Endpoints int
	s.Backends, v6Endpoints = backendsOf(s.Ports, slices_, nodeName)
	for _, b := range s.Backends {
		if b.Local && b.Active() {
			t.localEndpoints++
		}
	}
	if len(v6) > 0 || v6Endpoints > 0 {
		t.skips = append(t.skips, skip{SkipIPv6Part, fmt.Sprintf("IPv6 addresses %v and %d IPv6 endpoints left out", v6, v6Endpoints)})
	}
	t.svc = s
	return t
}

// backendsOf merges the IPv4 endpoints of a Service's slices into one
// backend per address, each with its port for every service port: a slice
// lists the ports its endpoints serve, by name and protocol.
func backendsOf(ports []services.Port, eps []*discoveryv1.EndpointSlice, nodeName string) ([]services.Backend, int) {
	byIP := map[netip.Addr]int{}
	var (
		out []services.Backend
		v6  int
	)
	for _, es := range eps {
		if es.AddressType != discoveryv1.AddressTypeIPv4 {
			if es.AddressType == discoveryv1.AddressTypeIPv6 {
				v6 += len(es.Endpoints)
			}
			continue
		}
		// This slice's port for each service port (0: not in this slice).
		resolved := make([]int32, len(ports))
		for i, sp := range ports {
			for _, ep := range es.Ports {
				proto := services.ProtocolTCP
				if ep.Protocol != nil {
					proto = services.Protocol(*ep.Protocol)
				}
				name := ""
				if ep.Name != nil {
					name = *ep.Name
				}
				if name == sp.Name && proto == sp.Protocol && ep.Port != nil {
					resolved[i] = *ep.Port
				}
			}
		}
		for _, e := range es.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			// kube-proxy uses an endpoint's first address; the others are
			// the same pod's and not load-balanced to.
			a, err := netip.ParseAddr(e.Addresses[0])
			if err != nil || !a.Is4() {
				continue
			}
			c := e.Conditions
			ready := c.Ready == nil || *c.Ready
			b := services.Backend{
				IP:          a,
				Ready:       ready,
				Serving:     c.Serving == nil && ready || c.Serving != nil && *c.Serving,
				Terminating: c.Terminating != nil && *c.Terminating,
				Ports:       slices.Clone(resolved),
			}
			if e.NodeName != nil {
				b.NodeName = *e.NodeName
				b.Local = b.NodeName == nodeName
			}
			if i, seen := byIP[a]; seen {
				// The same address in two slices (a pod whose ports moved
				// between slices): one backend serving the ports of both.
				prev := &out[i]
				for j, p := range b.Ports {
					if prev.Ports[j] == 0 {
						prev.Ports[j] = p
					}
				}
				prev.Ready = prev.Ready || b.Ready
				prev.Serving = prev.Serving || b.Serving
				prev.Terminating = prev.Terminating && b.Terminating
				continue
			}
			byIP[a] = len(out)
			out = append(out, b)
		}
	}
	// Ports equal to every port's TargetPort say nothing: leave them out,
	// which keeps the recorded state small and readable. When all backends
	// agree on a named port, it becomes the port's TargetPort.
	for i := range ports {
		first := int32(0)
		agree := true
		for _, b := range out {
			switch {
			case b.Ports[i] == 0:
				agree = false
			case first == 0:
				first = b.Ports[i]
			case b.Ports[i] != first:
				agree = false
			}
		}
		if agree && first != 0 {
			ports[i].TargetPort = first
		}
	}
	for j := range out {
		same := true
		for i := range ports {
			if out[j].Ports[i] != ports[i].TargetPort {
				same = false
				break
			}
		}
		if same {
			out[j].Ports = nil
		}
	}
	return out, v6
}

// triggerTime reads an EndpointSlice's last-change-trigger-time.
func triggerTime(es *discoveryv1.EndpointSlice) (time.Time, bool) {
	v, ok := es.Annotations[AnnotationTriggerTime]
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// itoa is strconv.Itoa for int32 ports in log lines.
func itoa(p int32) string { return strconv.Itoa(int(p)) }
