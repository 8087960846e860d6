package datapath_test

import (
	"testing"

	"github.com/podpath/podpath/maps"
)

// A reply to a masqueraded flow arrives for node:P and is delivered into
// the pod as the answer to what it sent: destination pod:40000 again,
// checksums fresh, and routed one hop as forward4 routes into a local pod
// (TTL down by one, the pod's MAC as destination, its gateway MAC as source,
// bpf_redirect_peer: TC_ACT_REDIRECT), counted as from_netdev/forward_local.
// The reverse entry accounts the reply. Each flow is first sent out through
// to_netdev, so the mapping is the one the allocator made.
func TestSNATReply(t *testing.T) {
	noCsum := udpFlow(podA.IP, podPort, serverIP, serverPort)
	noCsum.NoChecksum = true
	tests := []struct {
		name   string
		send   flow
		answer func(out flow) flow // the reply to the flow as it left
	}{
		{name: "TCP SYN-ACK", send: tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN),
			answer: func(out flow) flow { return out.answer(tcpSYN | tcpACK) }},
		{name: "TCP with data", send: tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN),
			answer: func(out flow) flow { return out.answer(tcpACK | tcpPSH).with("HTTP/1.1 200 OK\r\n") }},
		{name: "UDP", send: udpFlow(podA.IP, podPort, serverIP, serverPort),
			answer: func(out flow) flow { return out.answer(0).with("an answer") }},
		{name: "UDP without a checksum", send: noCsum,
			answer: func(out flow) flow { return out.answer(0).with("an answer") }},
		{name: "pod B's UDP", send: udpFlow(podB.IP, 53000, serverIP, 53),
			answer: func(out flow) flow { return out.answer(0).with("an answer") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{})
			out := d.egress(t, leaving(tc.send.ip()))
			expectVerdict(t, out, tcActOK)
			port := d.allocatedPort(t, out.out)
			reply := tc.answer(tc.send.from(masqIP, port))
			reply.TTL = 57
			in := arriving(reply.ip())

			r := d.ingress(t, in)

			expectVerdict(t, r, tcActRedirect)
			p, _ := podAt(tc.send.Src)
			expectTuple(t, r.out, addrPort(serverIP, tc.send.Dport), addrPort(p.IP, tc.send.Sport))
			expectBytes(t, "packet", r.out, reply.to(p.IP, tc.send.Sport).routedInto(p))
			expectChecksums(t, r.out)
			if tc.send.NoChecksum && l4ChecksumField(r.out) != 0 {
				t.Errorf("UDP checksum %#04x, want 0: sent without one", l4ChecksumField(r.out))
			}
			rk := natKey(tc.send.Proto, serverIP, tc.send.Dport, masqIP, port)
			e := d.mappings(t)[rk]
			if e.Packets != 1 || e.Bytes != uint64(len(in)) || e.TcpFlags != reply.TCPFlags {
				t.Errorf("reverse entry accounts %d packets, %d bytes, TCP flags %#x; want 1, %d, %#x",
					e.Packets, e.Bytes, e.TcpFlags, len(in), reply.TCPFlags)
			}
			d.expectCounts(t, counts{
				"to_netdev/snat":            {1, uint64(len(out.out))},
				"from_netdev/forward_local": {1, uint64(len(in))},
			})
		})
	}
}

// An echo reply carrying the allocated identifier goes back into the pod
// with the identifier the pod chose, the ICMP checksum following it.
func TestSNATReplyICMPEcho(t *testing.T) {
	const id = 0x0777
	d := newSNATDatapath(t, snatSetup{})
	ping := echoRequest(podA.IP, id, serverIP)
	out := d.egress(t, leaving(ping.ip()))
	expectVerdict(t, out, tcActOK)
	port := d.allocatedPort(t, out.out)
	reply := ping.from(masqIP, port).answer()
	in := arriving(reply.ip())

	r := d.ingress(t, in)

	expectVerdict(t, r, tcActRedirect)
	expectBytes(t, "packet", r.out, reply.to(podA.IP, id).routedInto(podA))
	expectSNATChecksums(t, r.out)
	if got := srcPortOf(r.out); got != id {
		t.Errorf("echo reply with identifier %#04x, want the pod's %#04x", got, id)
	}
	d.expectCounts(t, counts{
		"to_netdev/snat":            {1, uint64(len(out.out))},
		"from_netdev/forward_local": {1, uint64(len(in))},
	})
}

// What from_netdev does not translate back: packets for the node address
// that match no live reverse mapping. The port has no mapping, or one to
// another destination (mappings are per destination address, port and
// protocol), or the mapping has expired; an echo reply's identifier was
// never allocated; an echo request from outside is the node's to answer.
// Each goes to the stack exactly as it came, counted as to_stack, and no
// entry changes.
func TestSNATReplyNotTranslated(t *testing.T) {
	syn := tcpFlow(podA.IP, podPort, serverIP, serverPort, tcpSYN)
	ping := echoRequest(podA.IP, 0x0777, serverIP)
	// Both flows are mapped before each reply.
	tests := []struct {
		name   string
		expire bool                         // the flow's reverse entry expired before the reply
		reply  func(port, id uint16) []byte // an IPv4 packet for the node, given the TCP flow's port and the ping's identifier
	}{
		{name: "a port without mapping", reply: func(port, id uint16) []byte {
			return syn.from(masqIP, otherPort(port)).answer(tcpSYN | tcpACK).ip()
		}},
		{name: "from another address", reply: func(port, id uint16) []byte {
			return syn.from(masqIP, port).to(server2IP, serverPort).answer(tcpSYN | tcpACK).ip()
		}},
		{name: "from another port", reply: func(port, id uint16) []byte {
			return syn.from(masqIP, port).to(serverIP, 8443).answer(tcpSYN | tcpACK).ip()
		}},
		{name: "UDP to a TCP mapping's port", reply: func(port, id uint16) []byte {
			return udpFlow(serverIP, serverPort, masqIP, port).ip()
		}},
		{name: "an expired mapping", expire: true, reply: func(port, id uint16) []byte {
			return syn.from(masqIP, port).answer(tcpSYN | tcpACK).ip()
		}},
		{name: "an echo reply with an identifier never allocated", reply: func(port, id uint16) []byte {
			return ping.from(masqIP, otherPort(id)).answer().ip()
		}},
		{name: "an echo request from outside with the ping's allocated identifier", reply: func(port, id uint16) []byte {
			return echoRequest(serverIP, id, masqIP).ip()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{})
			out := d.egress(t, leaving(syn.ip()))
			expectVerdict(t, out, tcActOK)
			port := d.allocatedPort(t, out.out)
			pingOut := d.egress(t, leaving(ping.ip()))
			expectVerdict(t, pingOut, tcActOK)
			id := d.allocatedPort(t, pingOut.out)
			rk := natKey(protoTCP, serverIP, serverPort, masqIP, port)
			if tc.expire {
				d.expire(t, rk)
			}
			before := d.mappings(t)
			in := arriving(tc.reply(port, id))

			r := d.ingress(t, in)

			expectVerdict(t, r, tcActOK)
			expectBytes(t, "packet", r.out, in)
			d.expectCounts(t, counts{
				"to_netdev/snat":       {2, uint64(len(out.out) + len(pingOut.out))},
				"from_netdev/to_stack": {1, uint64(len(in))},
			})
			if after := d.mappings(t); !mapsEqualNAT(after, before) {
				t.Errorf("snat entries changed:\n got  %v\n want %v", after, before)
			}
		})
	}
}

// otherPort is a port of the range that is not port.
func otherPort(port uint16) uint16 {
	if port == snatPortMax {
		return snatPortMin
	}
	return port + 1
}

func mapsEqualNAT(a, b map[maps.CtKey]maps.NatEntry) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
