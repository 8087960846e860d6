package datapath_test

// Hand-built packets: just enough Ethernet, IPv4, TCP, UDP and ARP to feed
// the programs, every length and checksum computed here, so a test states
// the packet it sends and the exact bytes it expects back.

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/podpath/podpath/internal/csum"
)

// Ethertypes and IP protocols the tests speak.
const (
	ethPIPv4 = 0x0800
	ethPARP  = 0x0806
	ethPIPv6 = 0x86dd

	protoTCP = 6
	protoUDP = 17

	ethHeaderLen  = 14
	ipv4HeaderLen = 20
)

// Offsets of the IPv4 fields a test touches, from the start of the frame.
const (
	offIPVersionIHL = ethHeaderLen + 0
	offIPTotLen     = ethHeaderLen + 2
	offIPTTL        = ethHeaderLen + 8
	offIPCheck      = ethHeaderLen + 10
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// ether is an Ethernet II frame.
func ether(dst, src net.HardwareAddr, ethertype uint16, payload []byte) []byte {
	b := make([]byte, 0, ethHeaderLen+len(payload))
	b = append(b, dst...)
	b = append(b, src...)
	b = binary.BigEndian.AppendUint16(b, ethertype)
	return append(b, payload...)
}

// ipv4Header is what a test chooses about an IPv4 header; length and
// checksum follow from it.
type ipv4Header struct {
	ID       uint16
	TTL      uint8
	Protocol uint8
	Src, Dst netip.Addr
	Options  []byte // a multiple of 4 bytes
}

// ipv4 is an IPv4 packet with a correct total length and header checksum.
func ipv4(h ipv4Header, payload []byte) []byte {
	hlen := ipv4HeaderLen + len(h.Options)
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

// tcp is a TCP segment (ACK|PSH, fixed sequence numbers) with a correct
// checksum over the IPv4 pseudo-header.
func tcp(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 0x01020304) // seq
	binary.BigEndian.PutUint32(b[8:], 0x0a0b0c0d) // ack
	b[12] = 5 << 4                                // data offset
	b[13] = 0x18                                  // ACK|PSH
	binary.BigEndian.PutUint16(b[14:], 64240)     // window
	b = append(b, payload...)
	binary.BigEndian.PutUint16(b[16:], csum.Checksum(b, csum.Pseudo4(src, dst, protoTCP, len(b))))
	return b
}

// udp is a UDP datagram with a correct checksum over the IPv4 pseudo-header.
func udp(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b = append(b, payload...)
	sum := csum.Checksum(b, csum.Pseudo4(src, dst, protoUDP, len(b)))
	if sum == 0 {
		sum = 0xffff // zero means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(b[6:], sum)
	return b
}

// arpIPv4 is an ARP packet for IPv4 over Ethernet (RFC 826).
type arpIPv4 struct {
	Op       uint16 // 1 request, 2 reply
	SHA, THA net.HardwareAddr
	SIP, TIP netip.Addr
}

const (
	arpRequest = 1
	arpReply   = 2
)

func arp(a arpIPv4) []byte {
	b := make([]byte, 0, 28)
	b = binary.BigEndian.AppendUint16(b, 1) // hardware: Ethernet
	b = binary.BigEndian.AppendUint16(b, ethPIPv4)
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

// ipv4HeaderOf returns the IPv4 header of an Ethernet frame.
func ipv4HeaderOf(frame []byte) []byte {
	ihl := int(frame[offIPVersionIHL]&0x0f) * 4
	return frame[ethHeaderLen : ethHeaderLen+ihl]
}

// l4ChecksumValid verifies the TCP or UDP checksum of an IPv4 frame.
func l4ChecksumValid(frame []byte) bool {
	hdr := ipv4HeaderOf(frame)
	totLen := int(binary.BigEndian.Uint16(frame[offIPTotLen:]))
	l4 := frame[ethHeaderLen+len(hdr) : ethHeaderLen+totLen]
	src, _ := netip.AddrFromSlice(hdr[12:16])
	dst, _ := netip.AddrFromSlice(hdr[16:20])
	return csum.Valid(l4, csum.Pseudo4(src, dst, hdr[9], len(l4)))
}

// ipv4HeaderChecksum recomputes an IPv4 header's checksum from scratch.
func ipv4HeaderChecksum(hdr []byte) uint16 {
	h := append([]byte(nil), hdr...)
	h[10], h[11] = 0, 0
	return csum.Checksum(h, 0)
}

func netip4(s string) netip.Addr { return netip.MustParseAddr(s) }
