package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// IPAMDir is where the addresses of a network are recorded: one file per
// allocated address, named by the address and holding the container ID and
// interface name of its owner, next to a lock file every invocation takes.
func IPAMDir(stateDir, network string) string {
	return filepath.Join(stateDir, "ipam", network)
}

// AddressFile is the record of one allocated address.
func AddressFile(stateDir, network string, addr netip.Addr) string {
	return filepath.Join(IPAMDir(stateDir, network), addr.String())
}

const (
	lockFile     = "lock"
	lastReserved = "last_reserved"
)

// Allocation is an address and the attachment that holds it.
type Allocation struct {
	Addr        netip.Addr
	ContainerID string
	IfName      string
}

// pool allocates pod addresses from files under IPAMDir. Every operation
// holds an exclusive flock, so concurrent plugin processes never hand out
// the same address, and the files survive restarts.
type pool struct {
	dir  string
	cidr netip.Prefix // unset for pools opened only to release
	lock *os.File
}

func openPool(stateDir, network string, cidr netip.Prefix) (*pool, error) {
	dir := IPAMDir(stateDir, network)
	f, err := openLockFile(stateDir, network, lockFile)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, newError(types.ErrIOFailure, "ipam: lock %s: %v", dir, err)
	}
	return &pool{dir: dir, cidr: cidr, lock: f}, nil
}

// openLockFile opens (creates) one of the network's lock files.
func openLockFile(stateDir, network, name string) (*os.File, error) {
	dir := IPAMDir(stateDir, network)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, newError(types.ErrIOFailure, "ipam: %v", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, newError(types.ErrIOFailure, "ipam: %v", err)
	}
	return f, nil
}

// Close releases the lock.
func (p *pool) Close() error { return p.lock.Close() }

// list reads every allocation, sorted by address.
func (p *pool) list() ([]Allocation, error) {
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	var out []Allocation
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			// A record's temporary file, left by a plugin killed while
			// writing it: the pool is locked, so none is written now.
			os.Remove(filepath.Join(p.dir, e.Name()))
			continue
		}
		addr, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue // the locks, last_reserved
		}
		b, err := os.ReadFile(filepath.Join(p.dir, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ipam: %w", err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		a := Allocation{Addr: addr, ContainerID: strings.TrimSpace(lines[0])}
		if len(lines) > 1 {
			a.IfName = strings.TrimSpace(lines[1])
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out, nil
}

// find returns the address held by an attachment.
func (p *pool) find(containerID, ifname string) (netip.Addr, bool, error) {
	all, err := p.list()
	if err != nil {
		return netip.Addr{}, false, err
	}
	for _, a := range all {
		if a.ContainerID == containerID && a.IfName == ifname {
			return a.Addr, true, nil
		}
	}
	return netip.Addr{}, false, nil
}

// allocate returns the attachment's address, reserving a free one unless it
// already holds one (fresh is then false). Addresses are handed out round
// robin after the last one reserved, so a released address is not reused at
// once by the next pod.
func (p *pool) allocate(containerID, ifname string, skip netip.Addr) (addr netip.Addr, fresh bool, err error) {
	all, err := p.list()
	if err != nil {
		return addr, false, err
	}
	used := make(map[netip.Addr]bool, len(all))
	inPool := 0
	for _, a := range all {
		if a.ContainerID == containerID && a.IfName == ifname {
			return a.Addr, false, nil
		}
		used[a.Addr] = true
		if p.cidr.Contains(a.Addr) {
			inPool++
		}
	}
	first, last := hostRange(p.cidr)
	start := first
	if b, err := os.ReadFile(filepath.Join(p.dir, lastReserved)); err == nil {
		if prev, err := netip.ParseAddr(strings.TrimSpace(string(b))); err == nil && p.cidr.Contains(prev) && prev.Less(last) {
			start = prev.Next()
			if start.Less(first) {
				start = first
			}
		}
	}
	for cand := start; ; {
		if !used[cand] && cand != skip {
			if err := p.record(cand, containerID, ifname); err != nil {
				return addr, false, err
			}
			return cand, true, nil
		}
		if cand = cand.Next(); last.Less(cand) {
			cand = first
		}
		if cand == start {
			break
		}
	}
	return addr, false, newError(CodePoolExhausted, "address pool %s exhausted: %d addresses in use", p.cidr, inPool)
}

// record writes an allocation atomically, so a crash never leaves a torn
// file; the temporary file of a writer killed before the rename is removed
// by the next list.
func (p *pool) record(addr netip.Addr, containerID, ifname string) error {
	final := filepath.Join(p.dir, addr.String())
	tmp := filepath.Join(p.dir, "."+addr.String()+".tmp")
	if err := os.WriteFile(tmp, []byte(containerID+"\n"+ifname+"\n"), 0o600); err != nil {
		return newError(types.ErrIOFailure, "ipam: %v", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return newError(types.ErrIOFailure, "ipam: %v", err)
	}
	// Only a hint for the round robin: losing it is harmless.
	_ = os.WriteFile(filepath.Join(p.dir, lastReserved), []byte(addr.String()+"\n"), 0o600)
	return nil
}

// release frees the address of an attachment if it still holds it.
func (p *pool) release(a Allocation) error {
	all, err := p.list()
	if err != nil {
		return err
	}
	for _, cur := range all {
		if cur.Addr == a.Addr && cur.ContainerID == a.ContainerID && cur.IfName == a.IfName {
			if err := os.Remove(filepath.Join(p.dir, a.Addr.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("ipam: release %s: %w", a.Addr, err)
			}
		}
	}
	return nil
}

// hostRange is the first and last usable address of an IPv4 network: all
// but the network and broadcast addresses.
func hostRange(p netip.Prefix) (first, last netip.Addr) {
	base := p.Masked().Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	size := uint32(1) << (32 - p.Bits())
	return u32Addr(n + 1), u32Addr(n + size - 2)
}

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
