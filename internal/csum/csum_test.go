package csum

import (
	"net/netip"
	"testing"
)

// The IPv4 header of RFC 1071's era examples: a checksum computed over the
// header with the field zeroed makes the whole header valid.
func TestChecksumMakesHeaderValid(t *testing.T) {
	hdr := []byte{0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7}
	c := Checksum(hdr, 0)
	if c != 0xb861 {
		t.Fatalf("checksum %#04x, want 0xb861", c)
	}
	hdr[10], hdr[11] = byte(c>>8), byte(c)
	if !Valid(hdr, 0) {
		t.Error("header with its checksum does not verify")
	}
	hdr[15]++
	if Valid(hdr, 0) {
		t.Error("a changed header still verifies")
	}
}

func TestOddLengthAndPseudoHeader(t *testing.T) {
	if got := Sum([]byte{1, 2, 3}, 0); got != 0x0102+0x0300 {
		t.Errorf("Sum of 3 bytes = %#x", got)
	}
	src, dst := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	if got, want := Pseudo4(src, dst, 17, 8), uint32(0x0a00+0x0001+0x0a00+0x0002+17+8); got != want {
		t.Errorf("Pseudo4 = %#x, want %#x", got, want)
	}
}
