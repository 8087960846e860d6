package fuzz_test

// The seed corpus: for each target, frames that reach each of its paths on
// the node of node_test.go (well-formed TCP, UDP and ICMP of tracked and new
// flows, fragments, IPv4 options, ICMP errors quoting flows, truncated
// headers). TestSeedCorpus keeps testdata/fuzz equal to them.

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/podpath/podpath/internal/csum"
	"github.com/podpath/podpath/internal/packet"
)

var writeSeeds = flag.Bool("write-seeds", false, "write the seed corpus to testdata/fuzz")

// The seed corpus must be what the seeds below are; -write-seeds writes
// it. Files the fuzzer adds (findings turned regression inputs) are kept.
func TestSeedCorpus(t *testing.T) {
	for target, frames := range seedCorpus() {
		dir := filepath.Join("testdata", "fuzz", target)
		for name, frame := range frames {
			file := filepath.Join(dir, name)
			want := fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", frame)
			if *writeSeeds {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, want, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if got, err := os.ReadFile(file); err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s is not the seed the test builds (%v): go test ./test/fuzz -run TestSeedCorpus -write-seeds", file, err)
			}
		}
	}
}

func seedCorpus() map[string]map[string][]byte {
	fromNetwork := fromNetworkSeeds()
	// Frames cut short, which only XDP can be shown (see run).
	cut := fromNetwork["tcp-syn-to-node-port"]
	xdp := map[string][]byte{
		"frame-of-5-bytes":      cut[:5],
		"ethernet-header-only":  cut[:ethHeaderLen],
		"ipv4-header-cut-short": cut[:ethHeaderLen+12],
	}
	for name, frame := range fromNetwork {
		xdp[name] = frame
	}
	return map[string]map[string][]byte{
		"FuzzFromPod":    fromPodSeeds(),
		"FuzzToPod":      toPodSeeds(),
		"FuzzFromNetdev": fromNetwork,
		"FuzzToNetdev":   toNetdevSeeds(),
		"FuzzXDPNetdev":  xdp,
	}
}

func fromPodSeeds() map[string][]byte {
	a, b, c := framedBy(podA), framedBy(podB), framedBy(podC)
	spoofed := packet.Ether(podA.NodeMAC, podA.MAC, packet.EthPIPv4, ipUDP(podB.IP, 53, podC.IP, 53))
	return map[string][]byte{
		"tcp-syn-to-cluster-ip":                 a(ipTCP(podA.IP, 41000, clusterIP, 80, tcpSYN)),
		"tcp-ack-of-tracked-flow":               a(ipTCP(podA.IP, 40000, clusterIP, 80, tcpACK)),
		"tcp-answer-of-backend":                 b(ipTCP(podB.IP, 8080, podA.IP, 40000, tcpACK)),
		"tcp-answer-of-hairpin-backend":         a(ipTCP(podA.IP, 8080, clusterIP, 40002, tcpACK)),
		"tcp-syn-reopening-closed-flow":         a(ipTCP(podA.IP, 40001, clusterIP, 80, tcpSYN)),
		"tcp-syn-to-node-backend":               a(ipTCP(podA.IP, 41001, kubeIP, 443, tcpSYN)),
		"tcp-syn-to-empty-service":              a(ipTCP(podA.IP, 41002, emptyIP, 80, tcpSYN)),
		"tcp-syn-to-node-port":                  a(ipTCP(podA.IP, 41003, nodeIP, 30080, tcpSYN)),
		"tcp-syn-to-host-port":                  b(ipTCP(podB.IP, 41004, nodeIP, 20010, tcpSYN)),
		"tcp-syn-to-external-ip":                b(ipTCP(podB.IP, 41005, externalIP, 80, tcpSYN)),
		"tcp-syn-to-internet":                   a(ipTCP(podA.IP, 41006, serverIP, 443, tcpSYN)),
		"tcp-ack-of-masqueraded-flow":           a(ipTCP(podA.IP, 40000, serverIP, 443, tcpACK)),
		"tcp-ack-masqueraded-on-host-port":      a(ipTCP(podA.IP, 40010, serverIP, 443, tcpACK)),
		"tcp-answer-to-external-client":         b(ipTCP(podB.IP, 8080, serverIP, 5555, tcpACK)),
		"tcp-first-fragment-to-cluster-ip":      a(fragment(ipTCP(podA.IP, 41007, clusterIP, 80, tcpACK), true, 0)),
		"tcp-later-fragment-to-cluster-ip":      a(fragment(ipTCP(podA.IP, 41007, clusterIP, 80, tcpACK), false, 64)),
		"udp-first-fragment-to-cluster-ip":      c(fragment(ipUDP(podC.IP, 50008, clusterIP, 53), true, 0)),
		"tcp-first-fragment-to-internet":        a(fragment(ipTCP(podA.IP, 41011, serverIP, 443, tcpACK), true, 0)),
		"icmp-echo-first-fragment-to-internet":  c(fragment(ipEcho(icmpEchoRequest, podC.IP, serverIP, 0x4322), true, 0)),
		"tcp-with-ip-options-to-cluster-ip":     a(withOptions(ipTCP(podA.IP, 41008, clusterIP, 80, tcpSYN))),
		"tcp-header-cut-short":                  a(cutL4(ipTCP(podA.IP, 41009, clusterIP, 80, tcpSYN), 10)),
		"udp-to-cluster-ip":                     c(ipUDP(podC.IP, 50001, clusterIP, 53)),
		"udp-without-checksum":                  c(noUDPChecksum(ipUDP(podC.IP, 50002, clusterIP, 53))),
		"udp-to-node-backend":                   a(ipUDP(podA.IP, 50003, kubeIP, 53)),
		"udp-to-empty-service":                  a(ipUDP(podA.IP, 50004, emptyIP, 53)),
		"udp-to-pod":                            a(ipUDP(podA.IP, 50005, podB.IP, 53)),
		"udp-ttl-1-to-pod":                      a(withTTL(ipUDP(podA.IP, 50006, podB.IP, 53), 1)),
		"icmp-echo-of-masqueraded-flow":         b(ipEcho(icmpEchoRequest, podB.IP, serverIP, 0x1234)),
		"icmp-echo-to-internet":                 c(ipEcho(icmpEchoRequest, podC.IP, serverIP, 0x4321)),
		"icmp-error-quoting-a-flow":             a(ipICMPError(podA.IP, podB.IP, 3, 3, ipUDP(podB.IP, 5353, podA.IP, 50007))),
		"icmp-error-of-backend-about-request":   b(ipICMPError(podB.IP, podA.IP, 3, 3, ipTCP(podA.IP, 40000, podB.IP, 8080, tcpACK))),
		"icmp-error-of-backend-quoting-8-bytes": b(ipICMPError(podB.IP, podC.IP, 3, 3, ipUDP(podC.IP, 50000, podB.IP, 5353)[:28])),
		"icmp-error-of-client-about-answer":     a(ipICMPError(podA.IP, clusterIP, 3, 3, ipTCP(clusterIP, 80, podA.IP, 40000, tcpACK))),
		"icmp-error-about-hairpin-flow":         a(ipICMPError(podA.IP, clusterIP, 3, 3, ipTCP(clusterIP, 40002, podA.IP, 8080, tcpACK))),
		"ipv4-options-cut-short":                a(longIHL(ipTCP(podA.IP, 41010, clusterIP, 80, tcpSYN))),
		"spoofed-source":                        spoofed,
		"arp-request": packet.Ether(broadcast, podA.MAC, packet.EthPARP, packet.ARP(packet.ARPIPv4{
			Op: 1, SHA: podA.MAC, SIP: podA.IP, TIP: ip("169.254.1.1")})),
		"ipv6": packet.Ether(podA.NodeMAC, podA.MAC, packet.EthPIPv6, append([]byte{0x60}, make([]byte, 39)...)),
	}
}

func toPodSeeds() map[string][]byte {
	intoA := func(ipPkt []byte) []byte { return packet.Ether(podA.MAC, podA.NodeMAC, packet.EthPIPv4, ipPkt) }
	return map[string][]byte{
		"tcp-answer-of-node-backend":               intoA(ipTCP(nodeIP, 6443, podA.IP, 40100, tcpACK)),
		"tcp-fin-of-node-backend":                  intoA(ipTCP(nodeIP, 6443, podA.IP, 40100, tcpFIN|tcpACK)),
		"udp-answer-of-node-backend":               intoA(ipUDP(nodeIP, 5353, podA.IP, 40101)),
		"udp-answer-without-checksum":              intoA(noUDPChecksum(ipUDP(nodeIP, 5353, podA.IP, 40101))),
		"tcp-of-the-node":                          intoA(ipTCP(nodeIP, 33000, podA.IP, 80, tcpSYN)),
		"tcp-first-fragment-of-answer":             intoA(fragment(ipTCP(nodeIP, 6443, podA.IP, 40100, tcpACK), true, 0)),
		"tcp-later-fragment-of-answer":             intoA(fragment(ipTCP(nodeIP, 6443, podA.IP, 40100, tcpACK), false, 64)),
		"tcp-answer-with-ip-options":               intoA(withOptions(ipTCP(nodeIP, 6443, podA.IP, 40100, tcpACK))),
		"tcp-answer-cut-short":                     intoA(cutL4(ipTCP(nodeIP, 6443, podA.IP, 40100, tcpACK), 12)),
		"icmp-echo-reply-of-the-node":              intoA(ipEcho(icmpEchoReply, nodeIP, podA.IP, 7)),
		"icmp-error-quoting-a-flow":                intoA(ipICMPError(nodeIP, podA.IP, 3, 4, ipTCP(podA.IP, 40100, nodeIP, 6443, tcpACK))),
		"icmp-error-about-request-to-another-node": intoA(ipICMPError(nodeIP, podA.IP, 3, 4, ipTCP(podA.IP, 40003, remotePod, 8080, tcpACK))),
		"udp-first-fragment-of-answer":             intoA(fragment(ipUDP(nodeIP, 5353, podA.IP, 40101), true, 0)),
		"ipv4-options-cut-short":                   intoA(longIHL(ipUDP(nodeIP, 5353, podA.IP, 40101))),
		"arp-request": packet.Ether(broadcast, podA.NodeMAC, packet.EthPARP, packet.ARP(packet.ARPIPv4{
			Op: 1, SHA: podA.NodeMAC, SIP: nodeIP, TIP: podA.IP})),
	}
}

func fromNetworkSeeds() map[string][]byte {
	in := func(ipPkt []byte) []byte { return packet.Ether(uplinkMAC, gatewayMAC, packet.EthPIPv4, ipPkt) }
	return map[string][]byte{
		"tcp-syn-to-node-port":                     in(ipTCP(serverIP, 5556, nodeIP, 30080, tcpSYN)),
		"tcp-syn-to-node-port-from-a-pod-address":  in(ipTCP(podC.IP, 5567, nodeIP, 30080, tcpSYN)),
		"tcp-ack-of-tracked-node-port-flow":        in(ipTCP(serverIP, 5555, nodeIP, 30080, tcpACK)),
		"tcp-syn-to-external-ip":                   in(ipTCP(serverIP, 5557, externalIP, 80, tcpSYN)),
		"tcp-syn-to-host-port":                     in(ipTCP(serverIP, 5558, nodeIP, 20010, tcpSYN)),
		"tcp-syn-to-empty-service":                 in(ipTCP(serverIP, 5559, emptyIP, 80, tcpSYN)),
		"tcp-answer-of-masqueraded-flow":           in(ipTCP(serverIP, 443, nodeIP, 20001, tcpACK)),
		"tcp-answer-masqueraded-on-host-port":      in(ipTCP(serverIP, 443, nodeIP, 20010, tcpACK)),
		"tcp-answer-from-another-nodes-backend":    in(ipTCP(remotePod, 8080, podA.IP, 40003, tcpACK)),
		"tcp-first-fragment-to-node-port":          in(fragment(ipTCP(serverIP, 5560, nodeIP, 30080, tcpSYN), true, 0)),
		"tcp-later-fragment-to-node-port":          in(fragment(ipTCP(serverIP, 5560, nodeIP, 30080, tcpSYN), false, 64)),
		"tcp-with-ip-options-to-node-port":         in(withOptions(ipTCP(serverIP, 5561, nodeIP, 30080, tcpSYN))),
		"tcp-header-cut-short":                     in(cutL4(ipTCP(serverIP, 5562, nodeIP, 30080, tcpSYN), 19)),
		"udp-to-node-port":                         in(ipUDP(serverIP, 5563, nodeIP, 30053)),
		"udp-without-checksum-to-node-port":        in(noUDPChecksum(ipUDP(serverIP, 5564, nodeIP, 30053))),
		"udp-answer-of-masqueraded-flow":           in(ipUDP(serverIP, 53, nodeIP, 20003)),
		"udp-to-pod":                               in(ipUDP(remotePod, 53, podB.IP, 53)),
		"icmp-echo-reply-of-masqueraded-flow":      in(ipEcho(icmpEchoReply, serverIP, nodeIP, 20002)),
		"icmp-error-quoting-masqueraded-tcp":       in(ipICMPError(routerIP, nodeIP, 3, 4, ipTCP(nodeIP, 20001, serverIP, 443, tcpACK))),
		"icmp-error-quoting-8-bytes-of-udp":        in(ipICMPError(serverIP, nodeIP, 3, 3, ipUDP(nodeIP, 20003, serverIP, 53)[:28])),
		"icmp-error-quoting-a-node-port-flow":      in(ipICMPError(routerIP, nodeIP, 11, 0, ipTCP(nodeIP, 30080, serverIP, 5555, tcpACK))),
		"icmp-error-about-request-to-another-node": in(ipICMPError(routerIP, podA.IP, 11, 0, ipTCP(podA.IP, 40003, remotePod, 8080, tcpACK))),
		"udp-first-fragment-to-node-port":          in(fragment(ipUDP(serverIP, 5568, nodeIP, 30053), true, 0)),
		"tcp-first-fragment-of-masqueraded-answer": in(fragment(ipTCP(serverIP, 443, nodeIP, 20001, tcpACK), true, 0)),
		"ipv4-options-cut-short":                   in(longIHL(ipTCP(serverIP, 5565, nodeIP, 30080, tcpSYN))),
		"ipv4-total-length-beyond-frame":           totalLength(in(ipUDP(serverIP, 5566, nodeIP, 30053)), 1400),
		"arp-request":                              packet.Ether(broadcast, gatewayMAC, packet.EthPARP, packet.ARP(packet.ARPIPv4{Op: 1, SHA: gatewayMAC, SIP: routerIP, TIP: nodeIP})),
		"ipv6":                                     packet.Ether(uplinkMAC, gatewayMAC, packet.EthPIPv6, append([]byte{0x60}, make([]byte, 39)...)),
	}
}

func toNetdevSeeds() map[string][]byte {
	out := func(ipPkt []byte) []byte { return packet.Ether(gatewayMAC, uplinkMAC, packet.EthPIPv4, ipPkt) }
	return map[string][]byte{
		"tcp-syn-of-pod":                   out(ipTCP(podA.IP, 41100, serverIP, 443, tcpSYN)),
		"tcp-ack-of-masqueraded-flow":      out(ipTCP(podA.IP, 40000, serverIP, 443, tcpACK)),
		"tcp-ack-masqueraded-on-host-port": out(ipTCP(podA.IP, 40010, serverIP, 443, tcpACK)),
		"tcp-fin-of-masqueraded-flow":      out(ipTCP(podA.IP, 40000, serverIP, 443, tcpFIN|tcpACK)),
		"udp-of-masqueraded-flow":          out(ipUDP(podA.IP, 40003, serverIP, 53)),
		"udp-without-checksum-of-pod":      out(noUDPChecksum(ipUDP(podB.IP, 41101, serverIP, 53))),
		"icmp-echo-of-masqueraded-flow":    out(ipEcho(icmpEchoRequest, podB.IP, serverIP, 0x1234)),
		"icmp-echo-of-pod":                 out(ipEcho(icmpEchoRequest, podC.IP, serverIP, 0x4321)),
		"icmp-echo-reply-of-pod":           out(ipEcho(icmpEchoReply, podA.IP, serverIP, 0x4321)),
		"icmp-error-of-pod":                out(ipICMPError(podA.IP, serverIP, 3, 3, ipUDP(serverIP, 53, podA.IP, 41102))),
		"tcp-of-the-node":                  out(ipTCP(nodeIP, 45000, serverIP, 443, tcpSYN)),
		"tcp-of-pod-to-another-node-pod":   out(ipTCP(podA.IP, 41103, remotePod, 8080, tcpSYN)),
		"tcp-first-fragment-of-pod":        out(fragment(ipTCP(podA.IP, 41104, serverIP, 443, tcpACK), true, 0)),
		"tcp-later-fragment-of-pod":        out(fragment(ipTCP(podA.IP, 41104, serverIP, 443, tcpACK), false, 64)),
		"udp-first-fragment-of-pod":        out(fragment(ipUDP(podB.IP, 41107, serverIP, 53), true, 0)),
		"icmp-echo-first-fragment-of-pod":  out(fragment(ipEcho(icmpEchoRequest, podC.IP, serverIP, 0x4323), true, 0)),
		"tcp-with-ip-options-of-pod":       out(withOptions(ipTCP(podA.IP, 41105, serverIP, 443, tcpSYN))),
		"tcp-header-cut-short":             out(cutL4(ipTCP(podA.IP, 41106, serverIP, 443, tcpSYN), 16)),
		"ipv4-options-cut-short":           out(longIHL(ipUDP(podA.IP, 40003, serverIP, 53))),
		"ipv6":                             packet.Ether(gatewayMAC, uplinkMAC, packet.EthPIPv6, append([]byte{0x60}, make([]byte, 39)...)),
	}
}

var broadcast = mac("ff:ff:ff:ff:ff:ff")

// framedBy frames IPv4 packets as pod p puts them on its veth.
func framedBy(p pod) func([]byte) []byte {
	return func(ipPkt []byte) []byte { return packet.Ether(p.NodeMAC, p.MAC, packet.EthPIPv4, ipPkt) }
}

func ipTCP(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags uint8) []byte {
	return packet.IPv4(header(src, dst, protoTCP), packet.TCPSegment(src, dst, sport, dport, flags, []byte("a segment")))
}

func ipUDP(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) []byte {
	return packet.IPv4(header(src, dst, protoUDP), packet.UDP(src, dst, sport, dport, []byte("a datagram")))
}

func ipEcho(typ uint8, src, dst netip.Addr, id uint16) []byte {
	return packet.IPv4(header(src, dst, protoICMP), packet.ICMP(typ, 0, uint32(id)<<16|1, []byte("ping")))
}

// ipICMPError is an ICMP error from src to dst quoting a packet.
func ipICMPError(src, dst netip.Addr, typ, code uint8, quote []byte) []byte {
	return packet.IPv4(header(src, dst, protoICMP), packet.ICMP(typ, code, 1400, quote))
}

func header(src, dst netip.Addr, proto uint8) packet.IPv4Header {
	return packet.IPv4Header{ID: 0x1234, TTL: 64, Protocol: proto, Src: src, Dst: dst}
}

// fragment makes an IPv4 packet a fragment: more fragments follow or not,
// at offset (in 8-byte units).
func fragment(ipPkt []byte, more bool, offset uint16) []byte {
	if more {
		offset |= 0x2000
	}
	binary.BigEndian.PutUint16(ipPkt[6:], offset)
	return rechecked(ipPkt)
}

// withOptions adds a record-route option (8 bytes with padding).
func withOptions(ipPkt []byte) []byte {
	h := packet.IPv4Header{ID: 0x1234, TTL: 64, Protocol: ipPkt[9], Options: []byte{7, 7, 4, 0, 0, 0, 0, 0},
		Src: netip.AddrFrom4([4]byte(ipPkt[12:16])), Dst: netip.AddrFrom4([4]byte(ipPkt[16:20]))}
	return packet.IPv4(h, ipPkt[20:])
}

func withTTL(ipPkt []byte, ttl uint8) []byte {
	ipPkt[8] = ttl
	return rechecked(ipPkt)
}

// cutL4 keeps n bytes of the L4 header, total length included.
func cutL4(ipPkt []byte, n int) []byte {
	binary.BigEndian.PutUint16(ipPkt[2:], uint16(20+n))
	return rechecked(ipPkt[:20+n])
}

// longIHL claims a header of 60 bytes, longer than the packet.
func longIHL(ipPkt []byte) []byte {
	ipPkt[0] = 0x4f
	return rechecked(ipPkt)
}

// totalLength claims a total length other than the frame's.
func totalLength(frame []byte, n uint16) []byte {
	binary.BigEndian.PutUint16(frame[ethHeaderLen+2:], n)
	rechecked(frame[ethHeaderLen:])
	return frame
}

func noUDPChecksum(ipPkt []byte) []byte {
	ipPkt[26], ipPkt[27] = 0, 0
	return ipPkt
}

// rechecked recomputes the checksum of the 20-byte IPv4 header ipPkt starts with.
func rechecked(ipPkt []byte) []byte {
	ipPkt[10], ipPkt[11] = 0, 0
	binary.BigEndian.PutUint16(ipPkt[10:], csum.Checksum(ipPkt[:20], 0))
	return ipPkt
}
