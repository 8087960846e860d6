// Package sockwait finishes blocking socket calls that a signal interrupted.
//
// The Go runtime preempts threads with signals, and a socket call on a
// socket with SO_SNDTIMEO or SO_RCVTIMEO set is not restarted after one
// (signal(7)): it fails with EINTR. An interrupted TCP connect is not undone,
// though; the handshake carries on in the kernel, and calling connect again
// would only say EALREADY. Connected waits for that handshake instead.
package sockwait

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// Connected waits up to timeout for the connect in progress on fd to finish
// and returns its outcome: nil, the errno the handshake ended with, or
// ETIMEDOUT.
func Connected(fd int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return err
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}

// Retry repeats call while it fails with EINTR: for reads, writes and
// sends, an interrupted call transferred nothing and can simply be made
// again.
func Retry[T any](call func() (T, error)) (T, error) {
	for {
		v, err := call()
		if !errors.Is(err, unix.EINTR) {
			return v, err
		}
	}
}
