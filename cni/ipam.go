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

// IPAMDir is where the node's pod addresses are recorded, whatever network
// (conflist) a pod was attached through: the networks share the node's pod
// CIDR, so they share one pool, and no address is handed out twice. One
// file per allocated address, named by the address and holding the
// container ID, interface name and network of its owner, next to a lock
// file every invocation takes. Its name is no valid network name: before
// the pool was shared, each network kept its own under its name.
func IPAMDir(stateDir string) string {
	return filepath.Join(stateDir, "ipam", nodePool)
}

// nodePool names the shared pool's directory: a network name starts with
// a letter or digit.
const nodePool = "_node"

// networkDir holds what is a network's own: its attachments' lock (and,
// left by older versions, its addresses, which the pool takes over).
func networkDir(stateDir, network string) string {
	return filepath.Join(stateDir, "ipam", network)
}

// AddressFile is the record of one allocated address.
func AddressFile(stateDir string, addr netip.Addr) string {
	return filepath.Join(IPAMDir(stateDir), addr.String())
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
	Network     string
}

// pool allocates pod addresses from files under IPAMDir for attachments
// of one network. Every operation holds an exclusive flock, so concurrent
// plugin processes (of any network) never hand out the same address, and
// the files survive restarts.
type pool struct {
	dir     string
	network string
	cidr    netip.Prefix // unset for pools opened only to release
	lock    *os.File
}

func openPool(stateDir, network string, cidr netip.Prefix) (*pool, error) {
	dir := IPAMDir(stateDir)
	f, err := openLockFile(dir, lockFile)
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
	p := &pool{dir: dir, network: network, cidr: cidr, lock: f}
	if err := p.adoptNetworkPools(stateDir); err != nil {
		f.Close()
		return nil, err
	}
	return p, nil
}

// adoptNetworkPools moves the addresses recorded in per-network pools, as
// versions before the shared pool kept them, into it, each marked with its
// network. An address already in the shared pool stays where it was: two
// networks handed it out, and its second holder keeps a record that only
// its own DEL removes. Called holding the pool's lock.
func (p *pool) adoptNetworkPools(stateDir string) error {
	nets, err := os.ReadDir(filepath.Join(stateDir, "ipam"))
	if err != nil {
		return newError(types.ErrIOFailure, "ipam: %v", err)
	}
	for _, n := range nets {
		if !n.IsDir() || n.Name() == nodePool {
			continue
		}
		dir := networkDir(stateDir, n.Name())
		files, err := os.ReadDir(dir)
		if err != nil {
			return newError(types.ErrIOFailure, "ipam: %v", err)
		}
		for _, f := range files {
			addr, err := netip.ParseAddr(f.Name())
			if err != nil {
				continue // the locks, last_reserved
			}
			if _, err := os.Stat(filepath.Join(p.dir, f.Name())); err == nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, f.Name()))
			if err != nil {
				return newError(types.ErrIOFailure, "ipam: %v", err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			a := Allocation{Addr: addr, ContainerID: strings.TrimSpace(lines[0]), Network: n.Name()}
			if len(lines) > 1 {
				a.IfName = strings.TrimSpace(lines[1])
			}
			if err := p.write(a); err != nil {
				return err
			}
			if err := os.Remove(filepath.Join(dir, f.Name())); err != nil {
				return newError(types.ErrIOFailure, "ipam: %v", err)
			}
		}
	}
	return nil
}

// openLockFile opens (creates) a lock file in dir.
func openLockFile(dir, name string) (*os.File, error) {
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
		if len(lines) > 2 {
			a.Network = strings.TrimSpace(lines[2])
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out, nil
}

// holds says whether a is the allocation of this network's attachment
// containerID/ifname.
func (p *pool) holds(a Allocation, containerID, ifname string) bool {
	return a.ContainerID == containerID && a.IfName == ifname && a.Network == p.network
}

// find returns the address held by an attachment.
func (p *pool) find(containerID, ifname string) (netip.Addr, bool, error) {
	all, err := p.list()
	if err != nil {
		return netip.Addr{}, false, err
	}
	for _, a := range all {
		if p.holds(a, containerID, ifname) {
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
		if p.holds(a, containerID, ifname) {
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
	if err := p.write(Allocation{Addr: addr, ContainerID: containerID, IfName: ifname, Network: p.network}); err != nil {
		return err
	}
	// Only a hint for the round robin: losing it is harmless.
	_ = os.WriteFile(filepath.Join(p.dir, lastReserved), []byte(addr.String()+"\n"), 0o600)
	return nil
}

// write puts a's record in place atomically.
func (p *pool) write(a Allocation) error {
	final := filepath.Join(p.dir, a.Addr.String())
	tmp := filepath.Join(p.dir, "."+a.Addr.String()+".tmp")
	if err := os.WriteFile(tmp, []byte(a.ContainerID+"\n"+a.IfName+"\n"+a.Network+"\n"), 0o600); err != nil {
		return newError(types.ErrIOFailure, "ipam: %v", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return newError(types.ErrIOFailure, "ipam: %v", err)
	}
	return nil
}

// release frees the address of an attachment if it still holds it.
func (p *pool) release(a Allocation) error {
	all, err := p.list()
	if err != nil {
		return err
	}
	for _, cur := range all {
		if cur.Addr == a.Addr && p.holds(cur, a.ContainerID, a.IfName) {
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
