package sim

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/podpath/podpath/internal/csum"
	"golang.org/x/sys/unix"
)

// Ping sends one ICMP echo request with identifier id and size bytes of
// data from inside a namespace (do runs a function there: Pod.Do,
// Outside.Do, Node.Do) and waits up to three seconds for its reply, which
// must come from dst and carry the same data.
func Ping(do func(func() error) error, dst netip.Addr, id uint16, size int) error {
	return do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		msg := make([]byte, 8+size)
		msg[0] = 8 // echo request
		binary.BigEndian.PutUint16(msg[4:], id)
		binary.BigEndian.PutUint16(msg[6:], 1)
		for i := range size {
			msg[8+i] = "podpath!"[i%8]
		}
		binary.BigEndian.PutUint16(msg[2:], csum.Checksum(msg, 0))
		if err := unix.Sendto(fd, msg, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
			return fmt.Errorf("ping %s: %w", dst, err)
		}
		tv := unix.NsecToTimeval(int64(3 * time.Second))
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		buf := make([]byte, 65536)
		for {
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return fmt.Errorf("ping %s: no echo reply: %w", dst, err)
			}
			ihl := int(buf[0]&0x0f) * 4
			if n < ihl+8 || buf[ihl] != 0 || binary.BigEndian.Uint16(buf[ihl+4:]) != id {
				continue // not our reply (a raw socket sees every ICMP message)
			}
			if sa, ok := from.(*unix.SockaddrInet4); !ok || netip.AddrFrom4(sa.Addr) != dst {
				return fmt.Errorf("ping %s: echo reply from %v", dst, from)
			}
			if got := buf[ihl+8 : n]; string(got) != string(msg[8:]) {
				return fmt.Errorf("ping %s: echo reply with %d bytes of data, sent %d", dst, len(got), size)
			}
			return nil
		}
	})
}
