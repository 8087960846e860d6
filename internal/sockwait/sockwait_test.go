package sockwait

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// connecting starts a non-blocking connect to addr, as an interrupted
// blocking one leaves it: in progress.
func connecting(t *testing.T, addr *net.TCPAddr) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	to := &unix.SockaddrInet4{Port: addr.Port}
	copy(to.Addr[:], addr.IP.To4())
	if err := unix.Connect(fd, to); err != nil && err != unix.EINPROGRESS {
		t.Fatalf("connect: %v", err)
	}
	return fd
}

func TestConnectedReportsTheHandshakesOutcome(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := l.Addr().(*net.TCPAddr)
	if err := Connected(connecting(t, open), time.Second); err != nil {
		t.Errorf("to a listener: %v, want nil", err)
	}
	l.Close()
	if err := Connected(connecting(t, open), time.Second); err != unix.ECONNREFUSED {
		t.Errorf("to a closed port: %v, want ECONNREFUSED", err)
	}
}

func TestRetryRepeatsOnlyInterruptedCalls(t *testing.T) {
	calls := 0
	n, err := Retry(func() (int, error) {
		calls++
		if calls < 3 {
			return 0, unix.EINTR
		}
		return 7, unix.EAGAIN
	})
	if n != 7 || err != unix.EAGAIN || calls != 3 {
		t.Errorf("Retry = %d, %v after %d calls; want 7, EAGAIN after 3", n, err, calls)
	}
}
