package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/podpath/podpath/maps"
)

const ns = "default"

// service is a Service to create: name and a change to the defaults (one
// TCP port 80 -> 8080, type ClusterIP).
func newService(name string, change func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if change != nil {
		change(s)
	}
	return s
}

func (e *env) createService(t *testing.T, s *corev1.Service) *corev1.Service {
	t.Helper()
	out, err := e.client.CoreV1().Services(s.Namespace).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", s.Name, err)
	}
	return out
}

// endpoint is an EndpointSlice endpoint with its conditions.
func endpoint(ip string, ready, serving, terminating bool, node string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{
		Addresses: []string{ip},
		Conditions: discoveryv1.EndpointConditions{
			Ready: ptr.To(ready), Serving: ptr.To(serving), Terminating: ptr.To(terminating),
		},
	}
	if node != "" {
		e.NodeName = ptr.To(node)
	}
	return e
}

func ready(ip string) discoveryv1.Endpoint { return endpoint(ip, true, true, false, "other-node") }

func port(name string, proto corev1.Protocol, p int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(proto), Port: ptr.To(p)}
}

// slice writes an EndpointSlice of a Service, as the EndpointSlice
// controller would (no controller runs here: the tests own the slices).
func (e *env) slice(t *testing.T, svc, name string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) {
	t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns,
			Annotations: map[string]string{
				// The controller stamps when the change happened; network
				// programming latency is measured from it.
				"endpoints.kubernetes.io/last-change-trigger-time": time.Now().UTC().Format(time.RFC3339Nano),
			},
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc,
				discoveryv1.LabelManagedBy:   "podpath-test",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   eps,
	}
	c := e.client.DiscoveryV1().EndpointSlices(ns)
	cur, err := c.Get(context.Background(), name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = cur.ResourceVersion
		_, err = c.Update(context.Background(), es, metav1.UpdateOptions{})
	} else {
		_, err = c.Create(context.Background(), es, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatalf("write EndpointSlice %s: %v", name, err)
	}
}

// frontendsOf reads the programmed frontends that belong to s: its
// cluster IP, external and load-balancer IPs, and node ports.
func (e *env) frontendsOf(t *testing.T, s *corev1.Service) map[string]frontend {
	t.Helper()
	prefixes := []string{s.Spec.ClusterIP + ":"}
	for _, ip := range s.Spec.ExternalIPs {
		prefixes = append(prefixes, ip+":")
	}
	for _, in := range s.Status.LoadBalancer.Ingress {
		prefixes = append(prefixes, in.IP+":")
	}
	for _, p := range s.Spec.Ports {
		if p.NodePort != 0 {
			prefixes = append(prefixes, fmt.Sprintf("0.0.0.0:%d/", p.NodePort))
		}
	}
	out := map[string]frontend{}
	for k, v := range e.programmed(t) {
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				out[k] = v
			}
		}
	}
	return out
}

func (e *env) waitServiceFrontends(t *testing.T, s *corev1.Service, want map[string]frontend) {
	t.Helper()
	eventually(t, "frontends of "+s.Name, func() (bool, string) {
		got := e.frontendsOf(t, s)
		return equalFrontends(got, want), "got " + dump(got) + "\nwant " + dump(want)
	})
}

// fe is a frontend with these active backends.
func fe(active ...string) frontend {
	sort.Strings(active)
	return frontend{Active: active}
}

func TestServicesFromTheAPI(t *testing.T) {
	e := newEnv(t)
	e.startAgent(t, e.bin)
	httpPort := []discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)}

	cases := []struct {
		name    string
		change  func(*corev1.Service)
		slices  func(t *testing.T, e *env, svc string)
		afterLB func(*corev1.Service) // status update (load-balancer ingress)
		want    func(s *corev1.Service) map[string]frontend
	}{{
		name: "clusterip",
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort, ready("10.244.9.1"), ready("10.244.9.2"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			return map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe("10.244.9.1:8080", "10.244.9.2:8080")}
		},
	}, {
		name: "udp",
		change: func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(5353)}}
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", []discoveryv1.EndpointPort{port("dns", corev1.ProtocolUDP, 5353)}, ready("10.244.9.3"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			return map[string]frontend{s.Spec.ClusterIP + ":53/UDP internal": fe("10.244.9.3:5353")}
		},
	}, {
		name: "nodeport",
		change: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort, ready("10.244.9.4"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			np := s.Spec.Ports[0].NodePort
			b := fe("10.244.9.4:8080")
			return map[string]frontend{
				s.Spec.ClusterIP + ":80/TCP internal":      b,
				fmt.Sprintf("0.0.0.0:%d/TCP internal", np): b,
				fmt.Sprintf("0.0.0.0:%d/TCP external", np): b,
			}
		},
	}, {
		name:   "external-ips",
		change: func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.10"} },
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort, ready("10.244.9.5"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			b := fe("10.244.9.5:8080")
			return map[string]frontend{
				s.Spec.ClusterIP + ":80/TCP internal": b,
				"192.0.2.10:80/TCP internal":          b,
				"192.0.2.10:80/TCP external":          b,
			}
		},
	}, {
		name: "loadbalancer",
		change: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.AllocateLoadBalancerNodePorts = ptr.To(false)
		},
		afterLB: func(s *corev1.Service) {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.20"}, {IP: "192.0.2.21", IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)}}
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort, ready("10.244.9.6"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			b := fe("10.244.9.6:8080")
			return map[string]frontend{
				s.Spec.ClusterIP + ":80/TCP internal": b,
				"192.0.2.20:80/TCP internal":          b,
				"192.0.2.20:80/TCP external":          b,
			}
		},
	}, {
		name: "sctp-port-skipped",
		change: func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "sctp", Protocol: corev1.ProtocolSCTP, Port: 9, TargetPort: intstr.FromInt32(9)})
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", append(httpPort, port("sctp", corev1.ProtocolSCTP, 9)), ready("10.244.9.7"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			return map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe("10.244.9.7:8080")}
		},
	}, {
		name: "headless-ignored",
		change: func(s *corev1.Service) {
			s.Spec.ClusterIP = corev1.ClusterIPNone
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort, ready("10.244.9.8"))
		},
		want: func(s *corev1.Service) map[string]frontend { return map[string]frontend{} },
	}, {
		name: "other-proxy-ignored",
		change: func(s *corev1.Service) {
			s.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "someone-else"}
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort, ready("10.244.9.9"))
		},
		want: func(s *corev1.Service) map[string]frontend { return map[string]frontend{} },
	}, {
		name: "conditions-ready-serve",
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort,
				ready("10.244.10.1"),
				endpoint("10.244.10.2", false, true, true, "other-node"),   // terminating, serving
				endpoint("10.244.10.3", false, false, false, "other-node"), // not ready
			)
		},
		want: func(s *corev1.Service) map[string]frontend {
			return map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe("10.244.10.1:8080")}
		},
	}, {
		name: "conditions-terminating-fallback",
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort,
				endpoint("10.244.10.4", false, true, true, "other-node"),  // terminating, serving
				endpoint("10.244.10.5", false, false, true, "other-node"), // terminating, not serving
			)
		},
		want: func(s *corev1.Service) map[string]frontend {
			return map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe("10.244.10.4:8080")}
		},
	}, {
		name: "affinity",
		change: func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort, ready("10.244.10.6"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			return map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": {Active: []string{"10.244.10.6:8080"}, Affinity: 60}}
		},
	}, {
		name: "maglev-annotation",
		change: func(s *corev1.Service) {
			s.Annotations = map[string]string{"service.podpath.io/algorithm": "maglev"}
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort, ready("10.244.10.7"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			return map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": {Active: []string{"10.244.10.7:8080"}, Algo: uint8(maps.AlgoMaglev)}}
		},
	}, {
		name: "external-traffic-policy-local",
		change: func(s *corev1.Service) {
			// A health check node port comes with LoadBalancer Services.
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.Ports[0].NodePort = 30081
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort,
				endpoint("10.244.7.50", true, true, false, nodeName),
				ready("10.244.11.1"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			np := s.Spec.Ports[0].NodePort
			all := fe("10.244.11.1:8080", "10.244.7.50:8080")
			return map[string]frontend{
				s.Spec.ClusterIP + ":80/TCP internal":      all,
				fmt.Sprintf("0.0.0.0:%d/TCP internal", np): all,
				fmt.Sprintf("0.0.0.0:%d/TCP external", np): fe("10.244.7.50:8080"),
			}
		},
	}, {
		name: "internal-traffic-policy-local",
		change: func(s *corev1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort,
				endpoint("10.244.7.51", true, true, false, nodeName),
				ready("10.244.11.2"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			return map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe("10.244.7.51:8080")}
		},
	}, {
		name: "slices-merged",
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort, ready("10.244.12.1"))
			e.slice(t, svc, svc+"-b", httpPort, ready("10.244.12.2"), ready("10.244.12.3"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			return map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe("10.244.12.1:8080", "10.244.12.2:8080", "10.244.12.3:8080")}
		},
	}, {
		name: "named-target-port-per-slice",
		change: func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{
				{Name: "web", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")},
				{Name: "metrics", Protocol: corev1.ProtocolTCP, Port: 9100, TargetPort: intstr.FromString("metrics")},
			}
		},
		slices: func(t *testing.T, e *env, svc string) {
			// Old pods listen on 8080; new ones on 9090 and add a metrics port.
			e.slice(t, svc, svc+"-old", []discoveryv1.EndpointPort{port("web", corev1.ProtocolTCP, 8080)}, ready("10.244.13.1"))
			e.slice(t, svc, svc+"-new", []discoveryv1.EndpointPort{port("web", corev1.ProtocolTCP, 9090), port("metrics", corev1.ProtocolTCP, 9100)}, ready("10.244.13.2"))
		},
		want: func(s *corev1.Service) map[string]frontend {
			return map[string]frontend{
				s.Spec.ClusterIP + ":80/TCP internal":   fe("10.244.13.1:8080", "10.244.13.2:9090"),
				s.Spec.ClusterIP + ":9100/TCP internal": fe("10.244.13.2:9100"),
			}
		},
	}, {
		name: "ipv6-only-skipped",
		change: func(s *corev1.Service) {
			s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
			s.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicySingleStack)
		},
		want: func(s *corev1.Service) map[string]frontend { return map[string]frontend{} },
	}, {
		name: "nodeport-outside-range-skipped",
		change: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 32500 // the API's range, not the agent's (30000-32000)
		},
		slices: func(t *testing.T, e *env, svc string) {
			e.slice(t, svc, svc+"-a", httpPort, ready("10.244.14.1"))
		},
		want: func(s *corev1.Service) map[string]frontend { return map[string]frontend{} },
	}}

	created := map[string]*corev1.Service{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := e.createService(t, newService(c.name, c.change))
			if c.afterLB != nil {
				c.afterLB(s)
				var err error
				if s, err = e.client.CoreV1().Services(ns).UpdateStatus(context.Background(), s, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if c.slices != nil {
				c.slices(t, e, c.name)
			}
			e.waitServiceFrontends(t, s, c.want(s))
			created[c.name] = s
		})
	}

	// Every case above is still programmed as it was: none blocked another.
	t.Run("all-together", func(t *testing.T) {
		for _, c := range cases {
			if s := created[c.name]; s != nil {
				e.waitServiceFrontends(t, s, c.want(s))
			}
		}
	})

	t.Run("skip-metrics", func(t *testing.T) {
		for reason, want := range map[string]float64{"protocol": 1, "ip-family": 1, "invalid": 1} {
			eventually(t, "skipped "+reason, func() (bool, string) {
				got := e.metric(t, fmt.Sprintf("podpath_services_skipped{reason=%q}", reason))
				return got == want, fmt.Sprint(got)
			})
		}
	})

	t.Run("terminating-flag", func(t *testing.T) {
		// 10.244.10.2 (terminating, another endpoint ready), 10.244.10.3
		// (not ready) and 10.244.10.5 (terminating, not serving) keep
		// their flows only; 10.244.10.4 serves as the fallback, so it is
		// not flagged. (10.244.11.2, ready on another node behind an
		// internalTrafficPolicy Local cluster IP, no frontend can reach:
		// it has no entry at all.)
		eventually(t, "terminating backends", func() (bool, string) {
			got := e.terminating(t)
			want := []string{"10.244.10.2:8080", "10.244.10.3:8080", "10.244.10.5:8080"}
			return strings.Join(got, ",") == strings.Join(want, ","), dump(got)
		})
	})

	t.Run("health-check-node-port", func(t *testing.T) {
		s := created["external-traffic-policy-local"]
		hc := s.Spec.HealthCheckNodePort
		if hc == 0 {
			t.Fatal("the API server gave no healthCheckNodePort")
		}
		url := fmt.Sprintf("http://%s:%d/", nodeAddr.Addr(), hc)
		eventually(t, "health check 200", func() (bool, string) {
			code, body, err := e.get(url)
			return code == http.StatusOK && strings.Contains(body, `"localEndpoints":1`), fmt.Sprint(code, body, err)
		})
		// The local endpoint stops being ready: the node must fail the check
		// so an external load balancer stops sending it traffic.
		e.slice(t, s.Name, s.Name+"-a", httpPort,
			endpoint("10.244.7.50", false, true, true, nodeName),
			ready("10.244.11.1"))
		eventually(t, "health check 503", func() (bool, string) {
			code, body, err := e.get(url)
			return code == http.StatusServiceUnavailable && strings.Contains(body, `"localEndpoints":0`), fmt.Sprint(code, body, err)
		})
	})

	t.Run("update-and-delete", func(t *testing.T) {
		s := created["clusterip"]
		e.slice(t, s.Name, s.Name+"-a", httpPort, ready("10.244.9.2"), ready("10.244.9.20"))
		e.waitServiceFrontends(t, s, map[string]frontend{s.Spec.ClusterIP + ":80/TCP internal": fe("10.244.9.2:8080", "10.244.9.20:8080")})
		if err := e.client.CoreV1().Services(ns).Delete(context.Background(), s.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.waitServiceFrontends(t, s, map[string]frontend{})
	})

	t.Run("metrics", func(t *testing.T) {
		for _, m := range []string{
			"podpath_network_programming_duration_seconds_count",
			"podpath_sync_duration_seconds_count",
			`podpath_map_max_entries{map="conntrack"}`,
			`podpath_map_entries{map="services"}`,
		} {
			if v := e.metric(t, m); v <= 0 {
				t.Errorf("%s = %v, want > 0", m, v)
			}
		}
		// Every EndpointSlice write above carried a trigger time.
		if v := e.metric(t, "podpath_network_programming_duration_seconds_count"); v < float64(len(cases)) {
			t.Errorf("network programming latency observed %v times, want at least %d", v, len(cases))
		}
		if v := e.metric(t, "podpath_services_programmed"); v < 10 {
			t.Errorf("podpath_services_programmed = %v", v)
		}
	})

	t.Run("cni-installed", func(t *testing.T) {
		e.checkCNIInstalled(t)
	})
}
