// Package csum computes the Internet checksum (RFC 1071) of packets built
// by hand: by the tests, the benchmarks and the simulated hosts.
package csum

import (
	"encoding/binary"
	"net/netip"
)

// Sum adds b, as big-endian 16-bit words with an odd last byte padded with
// zero, to a running 32-bit sum.
func Sum(b []byte, sum uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

// Fold folds a running sum into 16 bits, carries added back in.
func Fold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// Checksum is the checksum of b, starting from a partial sum (a pseudo
// header's, or 0). The checksum field inside b must be zero.
func Checksum(b []byte, initial uint32) uint16 {
	return ^Fold(Sum(b, initial))
}

// Valid tells whether b, its checksum field included, sums to 0xffff:
// what a receiver checks.
func Valid(b []byte, initial uint32) bool {
	return Fold(Sum(b, initial)) == 0xffff
}

// Pseudo4 is the partial sum of the IPv4 pseudo header that TCP and UDP
// checksums cover.
func Pseudo4(src, dst netip.Addr, proto uint8, l4len int) uint32 {
	s, d := src.As4(), dst.As4()
	return Sum(d[:], Sum(s[:], 0)) + uint32(proto) + uint32(l4len)
}
