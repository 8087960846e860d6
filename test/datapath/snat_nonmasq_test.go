package datapath_test

import (
	"testing"

	"github.com/podpath/podpath/maps"
)

// What to_netdev leaves alone: traffic to the cluster's own ranges and to
// the extra non-masquerade ranges, traffic that is not a local pod's (the
// node's own, or from an address in the pod CIDR no pod here has), anything
// when SNAT is off or configured for another family, and protocols without
// ports or identifiers to allocate (GRE, an echo reply a pod sends back).
// Such a packet leaves byte for byte as it came, counted as to_stack, and
// neither a mapping nor an allocation statistic appears.
func TestSNATNotMasqueraded(t *testing.T) {
	gre := ipv4(ipv4Header{ID: 7, TTL: 64, Protocol: protoGRE, Src: podA.IP, Dst: serverIP},
		[]byte{0x00, 0x00, 0x08, 0x00, 0x45, 0x00, 0x00, 0x14}) // GRE header, then an inner packet's start
	echoReply := echoRequest(serverIP, 0x4242, podA.IP).answer()
	echoReply0 := echoRequest(serverIP, 0, podA.IP).answer() // identifier 0: no port either way
	tests := []struct {
		name  string
		setup snatSetup
		ip    []byte
	}{
		{name: "to a pod on another node", ip: tcpFlow(podA.IP, podPort, clusterPodIP, serverPort, tcpSYN).ip()},
		{name: "UDP to a pod on another node", ip: udpFlow(podA.IP, podPort, clusterPodIP, 53).ip()},
		{name: "echo request to a pod on another node", ip: echoRequest(podA.IP, 9, clusterPodIP).ip()},
		{name: "to an extra non-masquerade range", ip: tcpFlow(podA.IP, podPort, netip4("203.0.113.9"), serverPort, tcpSYN).ip()},
		{name: "the node's own traffic", ip: tcpFlow(masqIP, 50000, serverIP, serverPort, tcpSYN).ip()},
		{name: "the node's own echo request", ip: echoRequest(masqIP, 9, serverIP).ip()},
		{name: "from a pod CIDR address no local pod has", ip: tcpFlow(unknownIP, podPort, serverIP, serverPort, tcpSYN).ip()},
		{name: "from a pod on another node, routed through", ip: udpFlow(clusterPodIP, podPort, serverIP, 53).ip()},
		{name: "SNAT disabled", setup: snatSetup{Disabled: true},
			ip: tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN).ip()},
		{name: "SNAT configured for IPv6 only", setup: snatSetup{Family: maps.FamilyIPv6},
			ip: udpFlow(podA.IP, podPort, serverIP, serverPort).ip()},
		{name: "GRE", ip: gre},
		{name: "an echo reply from a pod: it answers, it started nothing", ip: echoReply.ip()},
		{name: "an echo reply from a pod with identifier 0", ip: echoReply0.ip()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, tc.setup)
			in := leaving(tc.ip)

			r := d.egress(t, in)

			expectVerdict(t, r, tcActOK)
			expectBytes(t, "packet", r.out, in)
			d.expectCounts(t, one("to_netdev/to_stack", in))
			d.expectMappings(t, emptyMapping)
			d.expectStats(t, noNATStats)
		})
	}
}
