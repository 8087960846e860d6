package services

import (
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"slices"
)

// maglevBackend is what the table is built from: a backend's id (what the
// table holds) and its address and port (what its permutation hashes, so
// every node builds the same table for the same backends).
type maglevBackend struct {
	ID   uint32
	Addr netip.AddrPort
}

// maglevTable builds a Maglev lookup table of size m (a prime) with the
// permutation algorithm of the Maglev paper (Eisenbud et al., NSDI 2016,
// section 3.4): backend i prefers the slots offset_i, offset_i + skip_i,
// offset_i + 2*skip_i, ... (mod m); the backends take turns claiming their
// next preferred free slot until every slot is taken. Each backend ends up
// with floor(m/n) or ceil(m/n) slots, and removing one backend moves little
// more than that backend's own share of the slots.
//
// The backends are sorted by address first, so the table depends only on
// the set of backends, not on the order they were listed in.
func maglevTable(backends []maglevBackend, m uint32) []uint32 {
	table := make([]uint32, m)
	if len(backends) == 0 || m == 0 {
		return table
	}
	bs := slices.Clone(backends)
	slices.SortFunc(bs, func(a, b maglevBackend) int { return a.Addr.Compare(b.Addr) })

	offset := make([]uint64, len(bs))
	skip := make([]uint64, len(bs))
	next := make([]uint64, len(bs))
	for i, b := range bs {
		h1, h2 := maglevHashes(b.Addr)
		offset[i] = h1 % uint64(m)
		skip[i] = h2%uint64(m-1) + 1
	}
	filled := make([]bool, m)
	var n uint32
	for {
		for i := range bs {
			// The i-th backend's next preferred slot that is still free.
			c := (offset[i] + next[i]*skip[i]) % uint64(m)
			for filled[c] {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % uint64(m)
			}
			table[c] = bs[i].ID
			filled[c] = true
			next[i]++
			n++
			if n == m {
				return table
			}
		}
	}
}

// maglevHashes are the two independent hashes of a backend the paper asks
// for (offset and skip): two halves of a SHA-256 of its address and port.
// Any strong hash would do; this one is in the standard library and stable
// across versions and machines.
func maglevHashes(a netip.AddrPort) (uint64, uint64) {
	var buf [18]byte
	addr := a.Addr().As16()
	copy(buf[:16], addr[:])
	binary.BigEndian.PutUint16(buf[16:], a.Port())
	sum := sha256.Sum256(buf[:])
	return binary.BigEndian.Uint64(sum[0:8]), binary.BigEndian.Uint64(sum[8:16])
}
