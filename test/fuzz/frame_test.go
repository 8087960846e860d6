package fuzz_test

// Reading frames the way the checks need them: the IPv4 packet inside, its
// tuple, and the answer a peer would send to it.

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/podpath/podpath/internal/packet"
)

const (
	protoICMP = packet.ProtoICMP
	protoTCP  = packet.ProtoTCP
	protoUDP  = packet.ProtoUDP

	ethHeaderLen = packet.EthHeaderLen

	icmpEchoReply   = 0
	icmpEchoRequest = 8

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpACK = 0x10
)

// ipv4Packet is an IPv4 packet, up to its total length.
type ipv4Packet struct {
	Header   []byte // options included
	Payload  []byte
	Proto    uint8
	Src, Dst netip.Addr
	// First is the first fragment of a datagram (offset 0, more follow),
	// Later any other: it carries no L4 header.
	First, Later bool
}

// parseIPv4 reads the IPv4 packet of an Ethernet frame; false for anything
// else: other ethertypes, a header that cannot be valid, a frame shorter
// than the packet's total length.
func parseIPv4(frame []byte) (ipv4Packet, bool) {
	if len(frame) < ethHeaderLen || binary.BigEndian.Uint16(frame[12:]) != packet.EthPIPv4 {
		return ipv4Packet{}, false
	}
	return parsePacket(frame[ethHeaderLen:], false)
}

// quoted reads the packet an ICMP error quotes, which may be cut short
// anywhere after its IPv4 header; false for other ICMP messages.
func quoted(icmp []byte) (ipv4Packet, bool) {
	if len(icmp) < 8 || icmp[0] != 3 && icmp[0] != 11 && icmp[0] != 12 {
		return ipv4Packet{}, false
	}
	return parsePacket(icmp[8:], true)
}

// parsePacket reads an IPv4 packet; cut says it may end before its total
// length does.
func parsePacket(ip []byte, cut bool) (ipv4Packet, bool) {
	if len(ip) < 20 {
		return ipv4Packet{}, false
	}
	hlen, end := int(ip[0]&0x0f)*4, int(binary.BigEndian.Uint16(ip[2:]))
	if ip[0]>>4 != 4 || hlen < 20 || end < hlen || hlen > len(ip) || end > len(ip) && !cut {
		return ipv4Packet{}, false
	}
	frag := binary.BigEndian.Uint16(ip[6:])
	return ipv4Packet{
		Header:  ip[:hlen],
		Payload: ip[hlen:min(end, len(ip))],
		Proto:   ip[9],
		Src:     netip.AddrFrom4([4]byte(ip[12:16])),
		Dst:     netip.AddrFrom4([4]byte(ip[16:20])),
		First:   frag&0x3fff == 0x2000,
		Later:   frag&0x1fff != 0,
	}, true
}

// tuple is what translation may change: addresses and ports. An ICMP
// echo's identifier is the source port of a request and the destination
// port of a reply, as bpf/lib/flow.h reads it, so a reply's tuple is its
// request's reversed.
type tuple struct {
	Proto    uint8
	ICMPType uint8 // echo request or reply
	Src, Dst netip.AddrPort
}

func (t tuple) String() string {
	if t.Proto == protoICMP {
		return fmt.Sprintf("ICMP type %d %s -> %s", t.ICMPType, t.Src, t.Dst)
	}
	return fmt.Sprintf("proto %d %s -> %s", t.Proto, t.Src, t.Dst)
}

// tupleOf reads the tuple of a TCP segment, UDP datagram or ICMP echo;
// false for anything else, and for later fragments, which carry no ports.
func tupleOf(frame []byte) (tuple, bool) {
	p, ok := parseIPv4(frame)
	if !ok || p.Later {
		return tuple{}, false
	}
	t := tuple{Proto: p.Proto}
	l4 := p.Payload
	var sport, dport uint16
	switch {
	case (p.Proto == protoTCP && len(l4) >= 20) || (p.Proto == protoUDP && len(l4) >= 8):
		sport, dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
	case p.Proto == protoICMP && len(l4) >= 8 && l4[0] == icmpEchoRequest:
		t.ICMPType, sport = l4[0], binary.BigEndian.Uint16(l4[4:])
	case p.Proto == protoICMP && len(l4) >= 8 && l4[0] == icmpEchoReply:
		t.ICMPType, dport = l4[0], binary.BigEndian.Uint16(l4[4:])
	default:
		return tuple{}, false
	}
	t.Src, t.Dst = netip.AddrPortFrom(p.Src, sport), netip.AddrPortFrom(p.Dst, dport)
	return t, true
}

// reversed is the tuple of the answer.
func (t tuple) reversed() tuple {
	t.Src, t.Dst = t.Dst, t.Src
	if t.Proto == protoICMP {
		t.ICMPType ^= icmpEchoRequest // request <-> reply
	}
	return t
}

// frame is a well-formed packet of t, checksums computed, in an Ethernet
// frame from src to dst: a TCP ACK with data, a UDP datagram or an echo.
func (t tuple) frame(dst, src net.HardwareAddr) []byte {
	s, d := t.Src.Addr(), t.Dst.Addr()
	payload := []byte("the answer")
	var l4 []byte
	switch t.Proto {
	case protoTCP:
		l4 = packet.TCP(s, d, t.Src.Port(), t.Dst.Port(), payload)
	case protoUDP:
		l4 = packet.UDP(s, d, t.Src.Port(), t.Dst.Port(), payload)
	default:
		id := t.Src.Port()
		if t.ICMPType == icmpEchoReply {
			id = t.Dst.Port()
		}
		l4 = packet.ICMP(t.ICMPType, 0, uint32(id)<<16|1, payload)
	}
	ip := packet.IPv4(packet.IPv4Header{ID: 0x7777, TTL: 64, Protocol: t.Proto, Src: s, Dst: d}, l4)
	return packet.Ether(dst, src, packet.EthPIPv4, ip)
}
