package datapath_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/podpath/podpath/internal/csum"
)

// A packet to a service without backends is answered the way iptables'
// REJECT answers it: the packet itself becomes an ICMP port unreachable
// from the frontend back to the client, sent back into the client's pod.
// The whole reply is checked against one built here byte by byte: Ethernet
// addresses swapped; IPv4 header of 20 bytes with TOS 0xc0 (internetwork
// control, as the kernel's ICMP errors), total length 56, no ID, no
// fragment flags, TTL 64, protocol ICMP, source the frontend, destination
// the client; ICMP type 3 code 3; and the quote: the original IPv4 header
// as it arrived and the first 8 bytes after it (RFC 792). No conntrack
// entry is made. The counter counts the reply as sent, 70 bytes.
func TestServiceReject(t *testing.T) {
	noSlots := func(proto uint8) service { return clusterIP(proto) }
	staleSlot := func(d *svcDatapath) { d.putSlot(t, tcpSvcID, 1, backendB) }
	withOptions := tcpFlow(podA.IP, 40200, vip, vipPort, tcpSYN)
	withOptions.Options = []byte{0x94, 0x04, 0x00, 0x00}
	tests := []struct {
		name  string
		svc   service
		setup func(*svcDatapath)
		send  flow
	}{
		{name: "TCP SYN (the reply is longer than the SYN)", svc: noSlots(protoTCP),
			send: tcpFlow(podA.IP, 40200, vip, vipPort, tcpSYN)},
		{name: "TCP SYN with data (the reply is shorter)", svc: noSlots(protoTCP),
			send: tcpFlow(podA.IP, 40201, vip, vipPort, tcpSYN).with(string(bytes.Repeat([]byte("x"), 200)))},
		{name: "UDP datagram", svc: noSlots(protoUDP),
			send: udpFlow(podA.IP, 40202, vip, vipPort)},
		{name: "UDP datagram without checksum", svc: noSlots(protoUDP),
			send: func() flow { f := udpFlow(podA.IP, 40203, vip, vipPort); f.NoChecksum = true; return f }()},
		{name: "a slot left over from a removed backend does not count", svc: noSlots(protoTCP), setup: staleSlot,
			send: tcpFlow(podA.IP, 40204, vip, vipPort, tcpSYN)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newServiceDatapath(t, tc.svc)
			if tc.setup != nil {
				tc.setup(d)
			}
			in := tc.send.sentBy(podA)
			want := portUnreachable(podA, vip, tc.send.ip())

			r := d.send(t, podA, in)

			if r.verdict != tcActRedirect {
				t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d): back into the client's pod", r.verdict, tcActRedirect)
			}
			expectICMPPortUnreachable(t, r.out, podA, vip, tc.send.ip())
			expectBytes(t, "ICMP reply", r.out, want)
			d.expectCounts(t, counts{"from_pod/svc_reject": {1, uint64(len(want))}})
			if n := len(d.ctAll(t)); n != 0 {
				t.Errorf("%d conntrack entries, want none", n)
			}
		})
	}

	// The reply quotes a plain 20-byte header only; a packet with IP
	// options is dropped unanswered, unchanged.
	t.Run("IP options: dropped, no reply", func(t *testing.T) {
		d := newServiceDatapath(t, noSlots(protoTCP))
		in := withOptions.sentBy(podA)
		r := d.send(t, podA, in)
		if r.verdict != tcActShot {
			t.Errorf("verdict %d, want TC_ACT_SHOT (%d)", r.verdict, tcActShot)
		}
		expectBytes(t, "packet", r.out, in)
		d.expectCounts(t, one("from_pod/drop_reject_failed", in))
	})

	// A slot still naming a backend whose entry is gone (deleted before
	// its slot was): the new flow is dropped as such, unchanged, with no
	// conntrack entry, and not rejected as a service without backends.
	t.Run("the chosen backend's entry is gone", func(t *testing.T) {
		d := newServiceDatapath(t, clusterIP(protoTCP, backendB))
		d.deleteBackend(t, backendB)
		in := tcpFlow(podA.IP, 40205, vip, vipPort, tcpSYN).sentBy(podA)
		r := d.send(t, podA, in)
		if r.verdict != tcActShot {
			t.Errorf("verdict %d, want TC_ACT_SHOT (%d)", r.verdict, tcActShot)
		}
		expectBytes(t, "packet", r.out, in)
		d.expectCounts(t, one("from_pod/drop_backend_gone", in))
		if n := len(d.ctAll(t)); n != 0 {
			t.Errorf("%d conntrack entries, want none", n)
		}
	})
}

// portUnreachable builds, independently of the program, the ICMP port
// unreachable that answers the IPv4 packet orig (as its sender sent it)
// from addr, as it goes back to the sender pod p.
func portUnreachable(p pod, from netip.Addr, orig []byte) []byte {
	icmp := []byte{3, 3, 0, 0, 0, 0, 0, 0} // type, code, checksum, unused
	icmp = append(icmp, orig[:ipv4HeaderLen+8]...)
	binary.BigEndian.PutUint16(icmp[2:], csum.Checksum(icmp, 0))

	ip := make([]byte, ipv4HeaderLen, ipv4HeaderLen+len(icmp))
	ip[0] = 0x45
	ip[1] = 0xc0
	binary.BigEndian.PutUint16(ip[2:], uint16(ipv4HeaderLen+len(icmp)))
	ip[8] = 64
	ip[9] = 1 // ICMP
	src := from.As4()
	copy(ip[12:], src[:])
	copy(ip[16:], orig[12:16]) // the original source
	binary.BigEndian.PutUint16(ip[10:], csum.Checksum(ip, 0))
	return ether(p.MAC, p.NodeMAC, ethPIPv4, append(ip, icmp...))
}

// expectICMPPortUnreachable checks the fields of an ICMP port unreachable
// one by one, for a readable message before the byte comparison.
func expectICMPPortUnreachable(t *testing.T, frame []byte, to pod, from netip.Addr, orig []byte) {
	t.Helper()
	const icmpOff = ethHeaderLen + ipv4HeaderLen
	if len(frame) != icmpOff+8+ipv4HeaderLen+8 {
		t.Errorf("reply of %d bytes, want %d", len(frame), icmpOff+8+ipv4HeaderLen+8)
		return
	}
	if !bytes.Equal(frame[0:6], to.MAC) || !bytes.Equal(frame[6:12], to.NodeMAC) {
		t.Errorf("MACs %s, want the client's MAC from its gateway MAC (swapped)", macs(frame))
	}
	hdr := frame[ethHeaderLen:icmpOff]
	src, _ := netip.AddrFromSlice(hdr[12:16])
	dst, _ := netip.AddrFromSlice(hdr[16:20])
	if totLen := binary.BigEndian.Uint16(hdr[2:]); totLen != 56 {
		t.Errorf("IPv4 total length %d, want 56", totLen)
	}
	if hdr[0] != 0x45 || hdr[8] != 64 || hdr[9] != 1 || src != from || dst != to.IP {
		t.Errorf("IPv4 version/IHL %#02x TTL %d protocol %d %s -> %s, want 0x45 TTL 64 protocol 1 %s -> %s",
			hdr[0], hdr[8], hdr[9], src, dst, from, to.IP)
	}
	if !csum.Valid(hdr, 0) || binary.BigEndian.Uint16(hdr[10:]) != ipv4HeaderChecksum(hdr) {
		t.Errorf("IPv4 header checksum %#04x, a fresh computation gives %#04x", binary.BigEndian.Uint16(hdr[10:]), ipv4HeaderChecksum(hdr))
	}
	icmp := frame[icmpOff:]
	if icmp[0] != 3 || icmp[1] != 3 {
		t.Errorf("ICMP type %d code %d, want 3/3 (port unreachable)", icmp[0], icmp[1])
	}
	fresh := withFieldZeroed(icmp, 2)
	if !csum.Valid(icmp, 0) || binary.BigEndian.Uint16(icmp[2:]) != csum.Checksum(fresh, 0) {
		t.Errorf("ICMP checksum %#04x, a fresh computation gives %#04x", binary.BigEndian.Uint16(icmp[2:]), csum.Checksum(fresh, 0))
	}
	if q := icmp[8:]; !bytes.Equal(q, orig[:ipv4HeaderLen+8]) {
		t.Errorf("quote\n got  % x\n want % x (the original IPv4 header and 8 bytes)", q, orig[:ipv4HeaderLen+8])
	}
}

// withFieldZeroed copies b with the 16-bit field at off zeroed.
func withFieldZeroed(b []byte, off int) []byte {
	c := bytes.Clone(b)
	c[off], c[off+1] = 0, 0
	return c
}
