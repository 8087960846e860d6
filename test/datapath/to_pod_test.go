package datapath_test

import (
	"encoding/binary"
	stdmaps "maps"
	"testing"
	"time"

	"github.com/podpath/podpath/maps"
)

// A service whose backend is one of the node's own addresses, as the
// `kubernetes` Service is (10.96.0.1:443 -> the API server on the node's
// address:6443), or any hostNetwork backend.
var (
	kubeVIP = netip4("10.96.0.1")
	beNode  = backend{ID: 14, Addr: nodeIP, Port: 6443}
)

const (
	kubePort    = 443
	kubeTCPSvc  = 7
	kubeUDPSvc  = 8
	kubeUDPPort = 53
	nodeUDPPort = 5353
)

var beNodeUDP = backend{ID: 15, Addr: nodeIP, Port: nodeUDPPort}

func kubeServices() []service {
	return []service{
		{ID: kubeTCPSvc, Frontend: frontend{Addr: kubeVIP, Port: kubePort, Proto: protoTCP},
			Scope: maps.ScopeInternal, Algo: maps.AlgoRandom, Slots: []uint32{beNode.ID}},
		{ID: kubeUDPSvc, Frontend: frontend{Addr: kubeVIP, Port: kubeUDPPort, Proto: protoUDP},
			Scope: maps.ScopeInternal, Algo: maps.AlgoRandom, Slots: []uint32{beNodeUDP.ID}},
	}
}

// newKubeDatapath is the service datapath with the node-address backends
// and their services; nodeIP is one of the node's addresses.
func newKubeDatapath(t *testing.T) *svcDatapath {
	t.Helper()
	d := newServiceDatapath(t)
	d.putBackend(t, beNode)
	d.putBackend(t, beNodeUDP)
	for _, s := range kubeServices() {
		d.putService(t, s)
	}
	d.putNodeAddr(t, nodeIP, 2)
	return d
}

// seedNodeFlow writes the conntrack entries from_pod writes for pod A's
// new TCP flow from sport to the node-address backend beNode, as
// TestToPodRestoresNodeBackendReply checks them, expiring in a minute: the
// tests below need no from_pod run, so they run where BPF_PROG_RUN refuses
// ingress_ifindex too.
func (d *svcDatapath) seedNodeFlow(t *testing.T, sport uint16) {
	t.Helper()
	expires := monotonic(t) + uint64(time.Minute)
	d.putCtEntry(t, ctKey(protoTCP, podA.IP, sport, kubeVIP, kubePort), maps.CtEntry{
		Expires: expires, Packets: 1, Bytes: 74, SvcId: kubeTCPSvc, BackendId: beNode.ID, TcpFlags: tcpSYN,
	})
	d.putCtEntry(t, ctKey(protoTCP, nodeIP, beNode.Port, podA.IP, sport), maps.CtEntry{
		Expires: expires, SvcId: kubeTCPSvc, BackendId: beNode.ID,
		NatAddr: maps.Addr16(kubeVIP), NatPort: maps.Port(kubePort), Flags: maps.CtFlagReply,
	})
}

// fromStackInto is the frame as the node's stack hands it to pod p's veth:
// p's MAC as destination, the veth's (the pod's gateway MAC) as source,
// TTL as the sender set it (the node's own packets are not forwarded).
func (f flow) fromStackInto(p pod) []byte { return ether(p.MAC, p.NodeMAC, ethPIPv4, f.ip()) }

// A pod reaches a service whose backend is a node address: from_pod
// rewrites the destination to the node's address and port and hands the
// packet to the stack, which delivers it locally. The node's answer comes
// back through the stack, routed by the pod's /32 onto its veth, and
// to_pod, at that veth's tc egress, gives it the frontend's address and
// port as source again: every other byte as the node sent it, both
// checksums exactly what a fresh computation gives (UDP without one keeps
// none). Without to_pod the pod would get an answer from node-IP:6443 to a
// connection it made to 10.96.0.1:443, and drop it.
func TestToPodRestoresNodeBackendReply(t *testing.T) {
	query := udpFlow(podA.IP, 50000, kubeVIP, kubeUDPPort)
	udpAnswer := func(q flow) flow { return q.to(nodeIP, nodeUDPPort).answer(0).with("an answer") }
	noChecksum := query
	noChecksum.NoChecksum = true
	tests := []struct {
		name    string
		request flow            // sent by pod A to the frontend
		backend backend         // where from_pod sends it
		answer  func(flow) flow // the node's answer to the translated request
	}{
		{name: "TCP SYN, SYN-ACK", request: tcpFlow(podA.IP, 40100, kubeVIP, kubePort, tcpSYN), backend: beNode,
			answer: func(got flow) flow { return got.answer(tcpSYN | tcpACK) }},
		{name: "TCP data", request: tcpFlow(podA.IP, 40101, kubeVIP, kubePort, tcpACK|tcpPSH).with("GET /version"),
			backend: beNode, answer: func(got flow) flow { return got.answer(tcpACK | tcpPSH).with("HTTP/1.1 200 OK") }},
		{name: "TCP FIN", request: tcpFlow(podA.IP, 40102, kubeVIP, kubePort, tcpACK), backend: beNode,
			answer: func(got flow) flow { return got.answer(tcpFIN | tcpACK) }},
		{name: "UDP with checksum", request: query, backend: beNodeUDP, answer: udpAnswer},
		{name: "UDP without checksum, both ways", request: noChecksum, backend: beNodeUDP, answer: udpAnswer},
		{name: "UDP answer checksum computes to zero once translated, sent as 0xffff",
			request: withSportWhere(query, func(f flow) bool {
				return computedZero(udpAnswer(f).from(kubeVIP, kubeUDPPort))
			}),
			backend: beNodeUDP, answer: udpAnswer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newKubeDatapath(t)
			in := tc.request.sentBy(podA)

			r := d.send(t, podA, in)

			// To the node's address and port, handed to the stack as it came
			// apart from that: MACs and TTL are the stack's business.
			got := tc.request.to(tc.backend.Addr, tc.backend.Port)
			if r.verdict != tcActOK {
				t.Errorf("request: verdict %d, want TC_ACT_OK (%d)", r.verdict, tcActOK)
			}
			expectTuple(t, r.out, addrPort(podA.IP, tc.request.Sport), addrPort(tc.backend.Addr, tc.backend.Port))
			expectBytes(t, "request", r.out, got.sentBy(podA))
			expectChecksums(t, r.out)
			rev := ctKey(tc.request.Proto, tc.backend.Addr, tc.backend.Port, podA.IP, tc.request.Sport)
			svcID := uint32(kubeTCPSvc)
			frontendPort := uint16(kubePort)
			if tc.request.Proto == protoUDP {
				svcID, frontendPort = kubeUDPSvc, kubeUDPPort
			}
			revEntry := maps.CtEntry{
				SvcId: svcID, BackendId: tc.backend.ID,
				NatAddr: maps.Addr16(kubeVIP), NatPort: maps.Port(frontendPort), Flags: maps.CtFlagReply,
			}
			d.expectCt(t, "reply entry", rev, r, lifetimeOf(tc.request.answer(0)), revEntry)

			answer := tc.answer(got)
			back := answer.fromStackInto(podA)

			r = d.runToPod(t, back)

			if r.verdict != tcActOK {
				t.Errorf("answer: verdict %d, want TC_ACT_OK (%d)", r.verdict, tcActOK)
			}
			want := answer.from(kubeVIP, frontendPort)
			expectTuple(t, r.out, addrPort(kubeVIP, frontendPort), addrPort(podA.IP, tc.request.Sport))
			expectBytes(t, "answer", r.out, want.fromStackInto(podA))
			expectChecksums(t, r.out)
			if tc.request.Proto == protoUDP {
				expectUDPChecksumKind(t, "answer", r.out, tc.request.NoChecksum)
			}
			revEntry.Packets, revEntry.Bytes, revEntry.TcpFlags = 1, uint64(len(back)), answer.TCPFlags
			d.expectCtTouched(t, "reply entry after the answer", rev, r, lifetimeOf(answer), revEntry)
			d.expectCounts(t, counts{
				"from_pod/to_stack": {1, uint64(len(in))},
				"to_pod/svc_reply":  {1, uint64(len(back))},
			})
		})
	}
}

// Everything the node's stack routes into a pod that is no reply of a
// translated flow leaves to_pod byte for byte as it came, counted as
// passed, conntrack untouched: the node's own traffic, packets that only
// look like a reply (another port, an expired entry, a tuple conntrack
// knows as a request), ICMP, ARP and IPv6. Conntrack holds a live
// translated TCP flow from pod A to the node-address backend throughout.
func TestToPodPassesTheRest(t *testing.T) {
	const sport = 40200
	request := tcpFlow(podA.IP, sport, kubeVIP, kubePort, tcpSYN)
	reply := request.to(nodeIP, beNode.Port).answer(tcpSYN | tcpACK)
	expiredSport := uint16(40201)
	expired := request.to(nodeIP, beNode.Port).from(podA.IP, expiredSport).answer(tcpSYN | tcpACK)
	udpEcho := echoRequest(nodeIP, 0x4242, podA.IP)
	udpEcho.Type = icmpEchoReply
	ipv6Frame := ether(podA.MAC, podA.NodeMAC, ethPIPv6, make([]byte, 40))
	ipv6Frame[ethHeaderLen] = 6 << 4

	tests := []struct {
		name  string
		frame []byte
	}{
		{"the node's own TCP to the pod", tcpFlow(nodeIP, 33000, podA.IP, 80, tcpSYN).fromStackInto(podA)},
		{"the node's own UDP to the pod", udpFlow(nodeIP, 33000, podA.IP, 53).fromStackInto(podA)},
		{"from the backend's address, another port", reply.from(nodeIP, beNode.Port+1).fromStackInto(podA)},
		{"from the backend, to another port of the pod", reply.to(podA.IP, sport+1).fromStackInto(podA)},
		{"UDP on the translated TCP flow's ports", flow{Proto: protoUDP, Src: nodeIP, Dst: podA.IP,
			Sport: beNode.Port, Dport: sport, TTL: 64, Payload: []byte("x")}.fromStackInto(podA)},
		{"a reply whose entry expired", expired.fromStackInto(podA)},
		{"the request's own tuple (a forward entry)", request.fromStackInto(podA)},
		{"the frontend as source already", reply.from(kubeVIP, kubePort).fromStackInto(podA)},
		{"another pod's traffic routed by the stack", udpFlow(podB.IP, 1234, podA.IP, 5678).fromStackInto(podA)},
		{"ICMP echo reply from the node", ether(podA.MAC, podA.NodeMAC, ethPIPv4, udpEcho.ip())},
		{"ARP request from the node", ether(broadcastMAC, podA.NodeMAC, ethPARP,
			arp(arpIPv4{Op: arpRequest, SHA: podA.NodeMAC, SIP: nodeIP, TIP: podA.IP}))},
		{"IPv6", ipv6Frame},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newKubeDatapath(t)
			d.seedNodeFlow(t, sport)
			// A reply entry of another flow, expired a second ago.
			k := ctKey(protoTCP, nodeIP, beNode.Port, podA.IP, expiredSport)
			d.putCtEntry(t, k, maps.CtEntry{
				Expires: monotonic(t) - uint64(time.Second), SvcId: kubeTCPSvc, BackendId: beNode.ID,
				NatAddr: maps.Addr16(kubeVIP), NatPort: maps.Port(kubePort), Flags: maps.CtFlagReply,
			})
			before := d.ctAll(t)

			r := d.runToPod(t, tc.frame)

			if r.verdict != tcActOK {
				t.Errorf("verdict %d, want TC_ACT_OK (%d)", r.verdict, tcActOK)
			}
			expectBytes(t, "packet", r.out, tc.frame)
			d.expectCounts(t, one("to_pod/pass", tc.frame))
			if after := d.ctAll(t); !stdmaps.Equal(before, after) {
				t.Errorf("conntrack changed:\n before %v\n after  %v", before, after)
			}
		})
	}
}

// Malformed IPv4 is dropped with the reason that names what is wrong, as
// from_pod drops it. Each frame is made from a valid reply of a live
// translated flow, so a parser that read past a bad header would translate
// it, and the unchanged output shows it did not.
func TestMalformedToPod(t *testing.T) {
	const sport = 40300
	request := tcpFlow(podA.IP, sport, kubeVIP, kubePort, tcpSYN)
	valid := request.to(nodeIP, beNode.Port).answer(tcpSYN | tcpACK).with("payload").fromStackInto(podA)
	totLen := func(n uint16) func([]byte) {
		return func(b []byte) { binary.BigEndian.PutUint16(b[offIPTotLen:], n) }
	}
	versionIHL := func(v byte) func([]byte) { return func(b []byte) { b[offIPVersionIHL] = v } }
	tests := []struct {
		name   string
		frame  []byte
		reason string
	}{
		{"IHL 4", edit(valid, versionIHL(0x44)), "drop_bad_ip_header"},
		{"version 6 inside an IPv4 frame", edit(valid, versionIHL(0x65)), "drop_bad_ip_header"},
		{"total length smaller than the header", edit(valid, totLen(19)), "drop_bad_ip_header"},
		{"total length one byte beyond the frame", edit(valid, totLen(uint16(len(valid)-ethHeaderLen+1))), "drop_truncated"},
		{"frame cut inside the payload", valid[:len(valid)-1], "drop_truncated"},
		{"TCP header cut short by the total length", edit(valid, totLen(ipv4HeaderLen+19)), "drop_truncated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newKubeDatapath(t)
			d.seedNodeFlow(t, sport)

			r := d.runToPod(t, tc.frame)

			if r.verdict != tcActShot {
				t.Errorf("verdict %d, want TC_ACT_SHOT (%d)", r.verdict, tcActShot)
			}
			expectBytes(t, "packet", r.out, tc.frame)
			d.expectCounts(t, one("to_pod/"+tc.reason, tc.frame))
		})
	}
}
