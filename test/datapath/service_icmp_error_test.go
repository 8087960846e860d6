package datapath_test

import (
	"testing"
)

// ICMP errors about a service flow reach the side that sent the packet in
// question with that packet as it sent it: a client gets its datagram to
// the frontend quoted (so a connected UDP socket learns ECONNREFUSED, and a
// TCP connection learns its path MTU), the backend its answer from its own
// address. Outer and quoted headers and every checksum are compared with an
// error built here from scratch.
func TestServiceICMPError(t *testing.T) {
	req := udpFlow(podA.IP, 40600, vip, vipPort).with("a query")
	toBackend := req.to(podB.IP, backendPort)
	atBackend := toBackend // as B receives it, one hop on
	atBackend.TTL--
	asSent := req // as A sent it, one hop on
	asSent.TTL--

	tests := []struct {
		name     string
		quoteLen int // 0: the whole packet
	}{
		{name: "whole datagram quoted"},
		{name: "RFC 792's 8 bytes quoted", quoteLen: ipv4HeaderLen + 8},
	}
	for _, tc := range tests {
		t.Run("port unreachable from the backend, "+tc.name, func(t *testing.T) {
			d := newServiceDatapath(t, clusterIP(protoUDP, backendB))
			expectForwarded(t, d.send(t, podA, req.sentBy(podA)), toBackend.routedInto(podB))

			q, want := quoted(atBackend.ip(), tc.quoteLen), quoted(asSent.ip(), tc.quoteLen)
			sent := icmpError{Src: podB.IP, Dst: podA.IP, Type: icmpDestUnreach, Code: 3, Quote: q, TTL: 64}
			got := icmpError{Src: vip, Dst: podA.IP, Type: icmpDestUnreach, Code: 3, Quote: want, TTL: 63}
			r := d.send(t, podB, ether(podB.NodeMAC, podB.MAC, ethPIPv4, sent.ip()))
			expectVerdict(t, r, tcActRedirect)
			expectBytes(t, "error", r.out, ether(podA.MAC, podA.NodeMAC, ethPIPv4, got.ip()))
			expectSNATChecksums(t, r.out)
		})
	}

	t.Run("port unreachable from the client about the backend's answer", func(t *testing.T) {
		d := newServiceDatapath(t, clusterIP(protoUDP, backendB))
		expectForwarded(t, d.send(t, podA, req.sentBy(podA)), toBackend.routedInto(podB))
		answer := atBackend.answer(0).with("an answer")
		answer.TTL = 64
		toClient := answer.from(vip, vipPort)
		expectForwarded(t, d.send(t, podB, answer.sentBy(podB)), toClient.routedInto(podA))
		atClient := toClient
		atClient.TTL--

		answerOneHop := answer
		answerOneHop.TTL--
		sent := icmpError{Src: podA.IP, Dst: vip, Type: icmpDestUnreach, Code: 3, Quote: atClient.ip(), TTL: 64}
		got := icmpError{Src: podA.IP, Dst: podB.IP, Type: icmpDestUnreach, Code: 3, Quote: answerOneHop.ip(), TTL: 63}
		r := d.send(t, podA, ether(podA.NodeMAC, podA.MAC, ethPIPv4, sent.ip()))
		expectVerdict(t, r, tcActRedirect)
		expectBytes(t, "error", r.out, ether(podB.MAC, podB.NodeMAC, ethPIPv4, got.ip()))
		expectSNATChecksums(t, r.out)
	})

	// The node routes a client's request to a backend it reaches through
	// its stack; a link on the way is too small, and the node's stack
	// answers fragmentation needed, routed into the client's veth: to_pod.
	t.Run("fragmentation needed from the node about a TCP segment", func(t *testing.T) {
		d := newServiceDatapath(t, clusterIP(protoTCP, backendRemote))
		seg := tcpFlow(podA.IP, 40601, vip, vipPort, tcpACK|tcpPSH).with("a large write, cut short here")
		toRemote := seg.to(remotePodIP, backendPort)
		out := d.send(t, podA, seg.sentBy(podA))
		expectVerdict(t, out, tcActOK)
		expectBytes(t, "to the stack", out.out, deliveredVia(seg, beRemote, podA))

		sent := icmpError{Src: nodeIP, Dst: podA.IP, Type: icmpDestUnreach, Code: 4, Rest: 1400, Quote: toRemote.ip(), TTL: 64}
		got := sent
		got.Quote = seg.ip()
		r := d.runToPod(t, ether(podA.MAC, podA.NodeMAC, ethPIPv4, sent.ip()))
		expectVerdict(t, r, tcActOK)
		expectBytes(t, "error", r.out, ether(podA.MAC, podA.NodeMAC, ethPIPv4, got.ip()))
		expectSNATChecksums(t, r.out)
		if c := d.counts(t)["to_pod/svc_reply"]; c.Packets != 1 {
			t.Errorf("to_pod/svc_reply: %d packets, want 1", c.Packets)
		}
	})

	// An error about a flow no service translated, or whose entry is gone,
	// is delivered as it came.
	t.Run("about no service flow", func(t *testing.T) {
		d := newServiceDatapath(t, clusterIP(protoUDP, backendB))
		direct := udpFlow(podA.IP, 40602, podB.IP, 9).with("to B itself")
		direct.TTL--
		sent := icmpError{Src: podB.IP, Dst: podA.IP, Type: icmpDestUnreach, Code: 3, Quote: direct.ip(), TTL: 64}
		got := sent
		got.TTL--
		r := d.send(t, podB, ether(podB.NodeMAC, podB.MAC, ethPIPv4, sent.ip()))
		expectVerdict(t, r, tcActRedirect)
		expectBytes(t, "error", r.out, ether(podA.MAC, podA.NodeMAC, ethPIPv4, got.ip()))
	})
}

// quoted is the first n bytes of a packet (all when n is 0), as an ICMP
// error quotes it.
func quoted(ip []byte, n int) []byte {
	if n == 0 || n > len(ip) {
		return ip
	}
	return ip[:n]
}
