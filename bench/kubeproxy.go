package main

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// kube-proxy's iptables mode, as its proxier writes the rules: one
// iptables-restore of the filter and nat tables per sync, with --noflush
// (only the KUBE-* chains it declares are replaced) and the jumps from the
// built-in chains installed once at start-up. The generator below writes
// that text for ClusterIP services on one TCP port each; nothing else of
// kube-proxy (NodePorts, external IPs, affinity, health checks) is needed
// for a pod reaching a ClusterIP, so none of it is written.

// kpService is one service port as kube-proxy's proxier sees it.
type kpService struct {
	namespace, name, portLabel string
	clusterIP                  netip.Addr
	port                       int
	targetPort                 int
	endpoints                  []netip.Addr
}

// portName is kube-proxy's ServicePortName string, "ns/name:port".
func (s kpService) portName() string {
	if s.portLabel == "" {
		return s.namespace + "/" + s.name
	}
	return s.namespace + "/" + s.name + ":" + s.portLabel
}

// kpChain is kube-proxy's chain naming: a prefix and the first 16
// characters of the base32 SHA-256 of the service port name and protocol
// (and, for an endpoint chain, the endpoint).
func kpChain(prefix, key string) string { return prefix + kpHash(key)[:16] }

// kpHash is the base32 SHA-256 of s, kube-proxy's naming hash in both modes.
func kpHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(h[:])
}

func (s kpService) svcChain() string { return kpChain("KUBE-SVC-", s.portName()+"tcp") }

func (s kpService) sepChain(ep netip.Addr) string {
	return kpChain("KUBE-SEP-", s.portName()+"tcp"+s.endpoint(ep))
}

func (s kpService) endpoint(ep netip.Addr) string {
	return netip.AddrPortFrom(ep, uint16(s.targetPort)).String()
}

// kpLargeClusterEndpoints: above this many endpoints kube-proxy leaves the
// comments off the per-endpoint rules, to keep the ruleset smaller.
const kpLargeClusterEndpoints = 1000

// kpMasqMark is kube-proxy's default masquerade bit (--iptables-masquerade-bit 14).
const kpMasqMark = "0x4000"

// kubeProxyStartup is what kube-proxy installs once when it starts: its
// chains, and the jumps to them from the built-in chains (prepended, as
// its EnsureRule(Prepend) does), in one restore on top of the node's rules.
func kubeProxyStartup() string {
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, c := range []string{"KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL"} {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	// In kube-proxy's order; each is inserted at the top, so the last
	// ends up first, as on a node.
	for _, j := range []string{
		`INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`,
		`FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`,
		`INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS`,
		`FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		`OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		`FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`,
		`INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`,
		`OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`,
		`FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`,
		`INPUT -j KUBE-FIREWALL`,
		`OUTPUT -j KUBE-FIREWALL`,
	} {
		chain, rest, _ := strings.Cut(j, " ")
		fmt.Fprintf(&b, "-I %s 1 %s\n", chain, rest)
	}
	b.WriteString("COMMIT\n*nat\n")
	for _, c := range []string{"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS"} {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, j := range []string{
		`OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		`PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		`POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`,
	} {
		chain, rest, _ := strings.Cut(j, " ")
		fmt.Fprintf(&b, "-I %s 1 %s\n", chain, rest)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// kubeProxyRules is one full sync of kube-proxy's proxier for svcs, in
// order (so the last service's rule is the last one KUBE-SERVICES
// matches): the input of `iptables-restore --noflush --counters`.
// clusterCIDR is kube-proxy's --cluster-cidr: traffic to a ClusterIP from
// outside it is masqueraded.
func kubeProxyRules(svcs []kpService, clusterCIDR netip.Prefix) string {
	endpoints := 0
	for _, s := range svcs {
		endpoints += len(s.endpoints)
	}
	large := endpoints > kpLargeClusterEndpoints

	var chains, rules strings.Builder
	chains.Grow(len(svcs) * 80)
	rules.Grow(len(svcs) * 700)
	w := func(b *strings.Builder, parts ...string) {
		for i, p := range parts {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(p)
		}
		b.WriteByte('\n')
	}

	var out strings.Builder
	out.WriteString("*filter\n")
	for _, c := range []string{"KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL"} {
		fmt.Fprintf(&out, ":%s - [0:0]\n", c)
	}
	out.WriteString(`-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP` + "\n")
	out.WriteString("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n")
	out.WriteString(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark ` + kpMasqMark + "/" + kpMasqMark + " -j ACCEPT\n")
	out.WriteString(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` + "\n")
	out.WriteString("COMMIT\n*nat\n")

	for _, c := range []string{"KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"} {
		fmt.Fprintf(&chains, ":%s - [0:0]\n", c)
	}
	w(&rules, "-A KUBE-POSTROUTING -m mark ! --mark "+kpMasqMark+"/"+kpMasqMark+" -j RETURN")
	w(&rules, "-A KUBE-POSTROUTING -j MARK --xor-mark "+kpMasqMark)
	w(&rules, `-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	w(&rules, "-A KUBE-MARK-MASQ -j MARK --or-mark "+kpMasqMark)

	cidr := clusterCIDR.String()
	for _, s := range svcs {
		name := s.portName()
		svcChain := s.svcChain()
		vip := s.clusterIP.String()
		port := strconv.Itoa(s.port)
		comment := `"` + name + ` cluster IP"`
		fmt.Fprintf(&chains, ":%s - [0:0]\n", svcChain)
		w(&rules, "-A KUBE-SERVICES -m comment --comment", comment, "-m tcp -p tcp -d", vip, "--dport", port, "-j", svcChain)
		w(&rules, "-A", svcChain, "-m comment --comment", comment, "-m tcp -p tcp -d", vip, "--dport", port, "! -s", cidr, "-j KUBE-MARK-MASQ")
		n := len(s.endpoints)
		for i, ep := range s.endpoints {
			sep := s.sepChain(ep)
			args := []string{"-A", svcChain}
			if !large {
				args = append(args, "-m comment --comment", `"`+name+" -> "+s.endpoint(ep)+`"`)
			}
			if i < n-1 {
				// Each endpoint but the last is a coin toss over those left.
				args = append(args, "-m statistic --mode random --probability", fmt.Sprintf("%0.10f", 1.0/float64(n-i)))
			}
			w(&rules, append(args, "-j", sep)...)
		}
		for _, ep := range s.endpoints {
			sep := s.sepChain(ep)
			fmt.Fprintf(&chains, ":%s - [0:0]\n", sep)
			cm := ""
			if !large {
				cm = " -m comment --comment " + name
			}
			w(&rules, "-A "+sep+cm+" -s "+ep.String()+" -j KUBE-MARK-MASQ")
			w(&rules, "-A "+sep+cm+" -m tcp -p tcp -j DNAT --to-destination "+s.endpoint(ep))
		}
	}
	w(&rules, `-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`)
	out.WriteString(chains.String())
	out.WriteString(rules.String())
	out.WriteString("COMMIT\n")
	return out.String()
}
