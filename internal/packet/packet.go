// Package packet builds Ethernet frames by hand for what runs the
// datapath's programs with BPF_PROG_RUN (test/datapath, test/fuzz, and
// podpath trace): just enough Ethernet, IPv4, TCP, UDP, ICMP and ARP,
// every length and checksum computed here, so a caller states the packet
// it sends and the bytes it expects back.
package packet

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/podpath/podpath/internal/csum"
)

// Ethertypes and IP protocols the tests speak.
const (
	EthPIPv4 = 0x0800
	EthPARP  = 0x0806
	EthPIPv6 = 0x86dd

	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17

	EthHeaderLen  = 14
	IPv4HeaderLen = 20
)

// Ether is an Ethernet II frame.
func Ether(dst, src net.HardwareAddr, ethertype uint16, payload []byte) []byte {
	b := make([]byte, 0, EthHeaderLen+len(payload))
	b = append(b, dst...)
	b = append(b, src...)
	b = binary.BigEndian.AppendUint16(b, ethertype)
	return append(b, payload...)
}

// IPv4Header is what a test chooses about an IPv4 header; length and
// checksum follow from it.
type IPv4Header struct {
	ID       uint16
	TTL      uint8
	Protocol uint8
	Src, Dst netip.Addr
	Options  []byte // a multiple of 4 bytes
}

// IPv4 is an IPv4 packet (don't fragment set) with a correct total length
// and header checksum.
func IPv4(h IPv4Header, payload []byte) []byte {
	hlen := IPv4HeaderLen + len(h.Options)
	b := make([]byte, hlen, hlen+len(payload))
	b[0] = 4<<4 | byte(hlen/4)
	binary.BigEndian.PutUint16(b[2:], uint16(hlen+len(payload)))
	binary.BigEndian.PutUint16(b[4:], h.ID)
	binary.BigEndian.PutUint16(b[6:], 0x4000) // DF
	b[8] = h.TTL
	b[9] = h.Protocol
	src, dst := h.Src.As4(), h.Dst.As4()
	copy(b[12:], src[:])
	copy(b[16:], dst[:])
	copy(b[20:], h.Options)
	binary.BigEndian.PutUint16(b[10:], csum.Checksum(b, 0))
	return append(b, payload...)
}

// TCP is a TCP segment (ACK|PSH, fixed sequence numbers) with a correct
// checksum over the IPv4 pseudo-header.
func TCP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	return TCPSegment(src, dst, sport, dport, 0x18, payload)
}

// TCPSegment is a TCP segment with the given flags (fixed sequence
// numbers) and a correct checksum over the IPv4 pseudo-header.
func TCPSegment(src, dst netip.Addr, sport, dport uint16, flags uint8, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 0x01020304) // seq
	binary.BigEndian.PutUint32(b[8:], 0x0a0b0c0d) // ack
	b[12] = 5 << 4                                // data offset
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], 64240) // window
	b = append(b, payload...)
	binary.BigEndian.PutUint16(b[16:], csum.Checksum(b, csum.Pseudo4(src, dst, ProtoTCP, len(b))))
	return b
}

// UDP is a UDP datagram with a correct checksum over the IPv4 pseudo-header.
func UDP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b = append(b, payload...)
	sum := csum.Checksum(b, csum.Pseudo4(src, dst, ProtoUDP, len(b)))
	if sum == 0 {
		sum = 0xffff // zero means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(b[6:], sum)
	return b
}

// ICMP is an ICMP message with a correct checksum: type, code, the four
// bytes after the checksum (echo: identifier and sequence; fragmentation
// needed: the next-hop MTU) and the body.
func ICMP(typ, code uint8, rest uint32, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	b[0], b[1] = typ, code
	binary.BigEndian.PutUint32(b[4:], rest)
	b = append(b, body...)
	binary.BigEndian.PutUint16(b[2:], csum.Checksum(b, 0))
	return b
}

// ARPIPv4 is an ARP packet for IPv4 over Ethernet (RFC 826).
type ARPIPv4 struct {
	Op       uint16 // 1 request, 2 reply
	SHA, THA net.HardwareAddr
	SIP, TIP netip.Addr
}

// ARP is the packet a.
func ARP(a ARPIPv4) []byte {
	b := make([]byte, 0, 28)
	b = binary.BigEndian.AppendUint16(b, 1) // hardware: Ethernet
	b = binary.BigEndian.AppendUint16(b, EthPIPv4)
	b = append(b, 6, 4)
	b = binary.BigEndian.AppendUint16(b, a.Op)
	sip, tip := a.SIP.As4(), a.TIP.As4()
	b = append(b, a.SHA...)
	b = append(b, sip[:]...)
	tha := a.THA
	if tha == nil {
		tha = make(net.HardwareAddr, 6)
	}
	b = append(b, tha...)
	return append(b, tip[:]...)
}
