package cni

import (
	"errors"
	"hash/fnv"
	"io"
	"os"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// attachmentsLock is the file, next to the pool's lock, whose bytes lock
// attachments: one byte each, at an offset hashed from the host veth name,
// so nothing is created or removed per attachment.
const attachmentsLock = "attachments.lock"

// errAttachmentBusy: another ADD or DEL of the attachment is running.
var errAttachmentBusy = errors.New("an ADD or DEL of this attachment is running")

// lockAttachment locks the attachment whose host veth is hostVeth, for the
// whole of an ADD or DEL (wait true: one of the same attachment already
// running finishes first), or for GC to remove it (wait false: a running
// ADD or DEL fails it with errAttachmentBusy, and GC leaves the attachment
// alone). Closing the file releases the lock; so does the process's death,
// a killed ADD's included. It is an open file description lock: a POSIX
// record lock belongs to the process, never conflicts within it, and goes
// when any descriptor of the file is closed.
func lockAttachment(stateDir, network, hostVeth string, wait bool) (*os.File, error) {
	f, err := openLockFile(networkDir(stateDir, network), attachmentsLock)
	if err != nil {
		return nil, err
	}
	h := fnv.New64a()
	h.Write([]byte(hostVeth))
	// 62 bits of offset: positive, and Start+Len fits an off_t.
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: int64(h.Sum64() >> 2), Len: 1}
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	for {
		err = unix.FcntlFlock(f.Fd(), cmd, &lk)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	switch {
	case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES):
		f.Close()
		return nil, errAttachmentBusy
	case err != nil:
		f.Close()
		return nil, newError(types.ErrIOFailure, "lock attachment %s: %v", hostVeth, err)
	}
	return f, nil
}
