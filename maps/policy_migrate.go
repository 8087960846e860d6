package maps

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
)

// MigratePolicy carries a node's policy over from the layout older
// versions pinned: every policy key in one trie (MapPolicyLegacy), the
// pods' identities as /32 entries of the ipcache. Keys of one port, of
// every port or of every protocol go to policy_rules, port prefixes to
// policy_ranges (their pods get EndpointPolicyRanges), pods' /32s are
// copied to identities; then the legacy trie's pin goes. The ipcache keeps
// its /32s until the agent's next write (the programs read them as CIDRs
// of the same identity: nothing changes meanwhile). Called by the loader
// before the new programs attach, so they find the policy in place;
// without the legacy pin it does nothing. Interrupted, it is run again.
func MigratePolicy(root string) error {
	legacy, err := OpenPinned(root, MapPolicyLegacy)
	if errors.Is(err, ErrNotLoaded) {
		return nil
	}
	if err != nil {
		return err
	}
	defer legacy.Close()
	pol, err := OpenPolicy(root)
	if err != nil {
		return err
	}
	defer pol.Close()

	cidrs, err := pol.CIDRIdentities()
	if err != nil {
		return err
	}
	pods := 0
	for pfx, id := range cidrs {
		if pfx.Bits() == 32 {
			if err := pol.SetIdentity(pfx, id); err != nil {
				return fmt.Errorf("migrate policy: %w", err)
			}
			pods++
		}
	}
	keys := map[PolicyKey]uint64{}
	if err := readPolicyKeys(legacy, keys); err != nil {
		return fmt.Errorf("migrate policy: %w", err)
	}
	ranged := map[netip.Addr]bool{}
	for k := range keys {
		if err := pol.PutKey(k); err != nil {
			return fmt.Errorf("migrate policy: %w", err)
		}
		if !k.Exact() {
			ranged[k.EndpointAddr()] = true
		}
	}
	eps := NewEndpoints(pol.endpoints)
	for ip := range ranged {
		info, ok, err := eps.Lookup(ip)
		if err != nil {
			return fmt.Errorf("migrate policy: %w", err)
		}
		if ok && info.Flags&EndpointPolicyRanges == 0 {
			info.Flags |= EndpointPolicyRanges
			if err := eps.Put(ip, info); err != nil {
				return fmt.Errorf("migrate policy: %w", err)
			}
		}
	}
	if err := os.Remove(MapPath(root, MapPolicyLegacy)); err != nil {
		return fmt.Errorf("migrate policy: %w", err)
	}
	slog.Info("policy carried over from the single-trie layout", "keys", len(keys), "podIdentities", pods, "podsWithRanges", len(ranged))
	return nil
}
