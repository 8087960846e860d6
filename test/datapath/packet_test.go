package datapath_test

// Hand-built packets (internal/packet), and what the tests read back out
// of the frames the programs return.

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/podpath/podpath/internal/csum"
	"github.com/podpath/podpath/internal/packet"
)

// The builders live in internal/packet, shared with test/fuzz; these are
// their names here.
var (
	ether = packet.Ether
	ipv4  = packet.IPv4
	tcp   = packet.TCP
	udp   = packet.UDP
	arp   = packet.ARP
)

type (
	ipv4Header = packet.IPv4Header
	arpIPv4    = packet.ARPIPv4
)

// Ethertypes and IP protocols the tests speak.
const (
	ethPIPv4 = packet.EthPIPv4
	ethPARP  = packet.EthPARP
	ethPIPv6 = packet.EthPIPv6

	protoTCP = packet.ProtoTCP
	protoUDP = packet.ProtoUDP

	ethHeaderLen  = packet.EthHeaderLen
	ipv4HeaderLen = packet.IPv4HeaderLen
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

const (
	arpRequest = 1
	arpReply   = 2
)

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
