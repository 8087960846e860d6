package agent

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/podpath/podpath/services"
)

func svc(change func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	if change != nil {
		change(s)
	}
	return s
}

func slice(ports map[string]int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: eps}
	for name, p := range ports {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(p)})
	}
	return es
}

func ep(ip, node string, ready, serving, terminating *bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{ip},
		NodeName:   ptr.To(node),
		Conditions: discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating},
	}
}

var (
	yes = ptr.To(true)
	no  = ptr.To(false)
)

func TestTranslate(t *testing.T) {
	a := netip.MustParseAddr
	cases := []struct {
		name     string
		svc      *corev1.Service
		slices   []*discoveryv1.EndpointSlice
		want     *services.Service
		ignored  bool
		skips    []string
		hc       int32
		localEps int
	}{{
		name:    "headless ignored",
		svc:     svc(func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }),
		ignored: true,
	}, {
		name: "external name ignored",
		svc: svc(func(s *corev1.Service) {
			s.Spec.Type, s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ServiceTypeExternalName, "", nil
		}),
		ignored: true,
	}, {
		name: "ipv6 only skipped",
		svc: svc(func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "fd00::10", []string{"fd00::10"}
		}),
		skips: []string{SkipIPFamily},
	}, {
		name: "dual stack keeps the IPv4 address",
		svc: svc(func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "fd00::10", []string{"fd00::10", "10.96.0.11"}
		}),
		want: &services.Service{Namespace: "ns", Name: "web", Type: services.TypeClusterIP, ClusterIP: a("10.96.0.11"), ExplicitNodePorts: true,
			Ports: []services.Port{{Name: "http", Protocol: "TCP", Port: 80, TargetPort: 80}}},
	}, {
		name: "only SCTP: nothing to serve",
		svc: svc(func(s *corev1.Service) {
			s.Spec.Ports[0].Protocol = corev1.ProtocolSCTP
		}),
		skips: []string{SkipProtocol, SkipNoPorts},
	}, {
		name: "named port, endpoints merged across slices, conditions",
		svc:  svc(nil),
		slices: []*discoveryv1.EndpointSlice{
			slice(map[string]int32{"http": 8080}, ep("10.244.1.2", "n1", yes, yes, no), ep("10.244.1.3", "n2", no, yes, yes)),
			slice(map[string]int32{"http": 8080}, ep("10.244.1.4", "n1", nil, nil, nil)),
			{AddressType: discoveryv1.AddressTypeIPv6, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"fd00::1"}}}},
		},
		want: &services.Service{Namespace: "ns", Name: "web", Type: services.TypeClusterIP, ClusterIP: a("10.96.0.10"), ExplicitNodePorts: true,
			Ports: []services.Port{{Name: "http", Protocol: "TCP", Port: 80, TargetPort: 8080}},
			Backends: []services.Backend{
				{IP: a("10.244.1.2"), Ready: true, Serving: true, NodeName: "n1", Local: true},
				{IP: a("10.244.1.3"), Serving: true, Terminating: true, NodeName: "n2"},
				{IP: a("10.244.1.4"), Ready: true, Serving: true, NodeName: "n1", Local: true},
			}},
		skips:    []string{SkipIPv6Part},
		localEps: 2,
	}, {
		name: "a named port resolved differently per slice",
		svc:  svc(nil),
		slices: []*discoveryv1.EndpointSlice{
			slice(map[string]int32{"http": 8080}, ep("10.244.1.2", "n2", yes, yes, no)),
			slice(map[string]int32{"http": 9090}, ep("10.244.1.3", "n2", yes, yes, no)),
		},
		want: &services.Service{Namespace: "ns", Name: "web", Type: services.TypeClusterIP, ClusterIP: a("10.96.0.10"), ExplicitNodePorts: true,
			Ports: []services.Port{{Name: "http", Protocol: "TCP", Port: 80, TargetPort: 80}},
			Backends: []services.Backend{
				{IP: a("10.244.1.2"), Ready: true, Serving: true, NodeName: "n2", Ports: []int32{8080}},
				{IP: a("10.244.1.3"), Ready: true, Serving: true, NodeName: "n2", Ports: []int32{9090}},
			}},
	}, {
		name: "load balancer: node ports as allocated, proxy-mode ingress left out, ETP Local with its health check",
		svc: svc(func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.Ports[0].NodePort = 30080
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = 31000
			s.Spec.ExternalIPs = []string{"192.0.2.1", "2001:db8::1"}
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
				{IP: "192.0.2.2"}, {IP: "192.0.2.3", IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)}, {Hostname: "lb.example"},
			}
		}),
		want: &services.Service{Namespace: "ns", Name: "web", Type: services.TypeLoadBalancer, ClusterIP: a("10.96.0.10"), ExplicitNodePorts: true,
			ExternalIPs: []netip.Addr{a("192.0.2.1")}, LoadBalancerIPs: []netip.Addr{a("192.0.2.2")},
			ExternalTrafficPolicy: services.TrafficPolicyLocal,
			Ports:                 []services.Port{{Name: "http", Protocol: "TCP", Port: 80, TargetPort: 80, NodePort: 30080}}},
		skips: []string{SkipIPv6Part},
		hc:    31000,
	}, {
		name: "affinity default timeout, ETP on a plain ClusterIP dropped, ITP Local",
		svc: svc(func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
		}),
		want: &services.Service{Namespace: "ns", Name: "web", Type: services.TypeClusterIP, ClusterIP: a("10.96.0.10"), ExplicitNodePorts: true,
			SessionAffinity: services.AffinityClientIP, AffinityTimeout: services.DefaultAffinityTimeout,
			InternalTrafficPolicy: services.TrafficPolicyLocal,
			Ports:                 []services.Port{{Name: "http", Protocol: "TCP", Port: 80, TargetPort: 80}}},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := translate(c.svc, c.slices, "n1")
			if got.ignored != c.ignored {
				t.Fatalf("ignored = %v, want %v", got.ignored, c.ignored)
			}
			var reasons []string
			for _, s := range got.skips {
				reasons = append(reasons, s.reason)
			}
			if !reflect.DeepEqual(reasons, c.skips) {
				t.Errorf("skips = %v, want %v (%+v)", reasons, c.skips, got.skips)
			}
			if !reflect.DeepEqual(got.svc, c.want) {
				t.Errorf("service:\n got %+v\nwant %+v", got.svc, c.want)
			}
			if got.healthCheckNodePort != c.hc || got.localEndpoints != c.localEps {
				t.Errorf("health check %d with %d local endpoints, want %d with %d", got.healthCheckNodePort, got.localEndpoints, c.hc, c.localEps)
			}
		})
	}
}
