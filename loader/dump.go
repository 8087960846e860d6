package loader

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// Consistent runs a netlink dump until the kernel reports it whole. A dump
// that overlaps a change of the table it reads (a device or route another
// process adds or removes, as pods come and go) comes back partial with
// netlink.ErrDumpInterrupted; it is taken again, a few times at most.
func Consistent[T any](dump func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for range 20 {
		if out, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return out, err
}
