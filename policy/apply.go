package policy

import (
	"errors"
	"fmt"
	"net/netip"

	pmaps "github.com/podpath/podpath/maps"
)

// Changes counts what Apply wrote.
type Changes struct {
	IdentitiesSet, IdentitiesDeleted int
	KeysAdded, KeysDeleted           int
	EndpointsChanged                 int
}

// Apply makes the node's maps hold st, writing only what differs, in an
// order that never lets through what neither the old nor the new state
// allows: enforcement is switched on before anything else, stale rules go
// before new ones come, enforcement is switched off last. A pod whose
// endpoint is not (yet) on this node is skipped: the next Apply after its
// CNI ADD writes it. A new pod's endpoint (pending, closed) is opened to
// its policy once the state knows the pod.
func Apply(pol *pmaps.Policy, st State) (Changes, error) {
	w := NewWriter(pol)
	return w.Write(st)
}

// view is what the identities, ipcache and policy maps hold, as read back
// or as last written.
type view struct {
	ids, cidrs map[netip.Prefix]uint32
	keys       map[pmaps.PolicyKey]uint64
}

// Writer applies states one after another (as Apply does each), writing
// the difference against what it wrote last: the maps' identities and
// keys (which only the agent writes) are read back once, and again after
// Reread or a failed write; endpoints' enforcement flags, which the CNI
// plugin writes too, are read every time.
type Writer struct {
	pol  *pmaps.Policy
	have *view
}

// NewWriter is a Writer that reads the maps on its first Write.
func NewWriter(pol *pmaps.Policy) *Writer { return &Writer{pol: pol} }

// Reread makes the next Write read the maps back (a periodic resync
// repairs what something else changed).
func (w *Writer) Reread() { w.have = nil }

func (w *Writer) read() (*view, error) {
	v := &view{}
	var err error
	if v.ids, err = w.pol.Identities(); err != nil {
		return nil, err
	}
	if v.cidrs, err = w.pol.CIDRIdentities(); err != nil {
		return nil, err
	}
	if v.keys, err = w.pol.Keys(); err != nil {
		return nil, err
	}
	return v, nil
}

// Write makes the maps hold st, as Apply.
func (w *Writer) Write(st State) (Changes, error) {
	if w.have == nil {
		v, err := w.read()
		if err != nil {
			return Changes{}, err
		}
		w.have = v
	}
	ch, err := w.write(st)
	if err != nil {
		w.have = nil // what was written is unknown: read it back next time
	}
	return ch, err
}

func (w *Writer) write(st State) (Changes, error) {
	var ch Changes
	pol, have := w.pol, w.have
	haveIDs, haveCIDRs, haveKeys := have.ids, have.cidrs, have.keys
	haveFlags, err := pol.Enforcement()
	if err != nil {
		return ch, err
	}
	wantKeys := map[pmaps.PolicyKey]bool{}
	for _, ep := range st.Endpoints {
		for _, r := range ep.Rules {
			keys, err := r.Keys()
			if err != nil {
				return ch, err
			}
			for _, k := range keys {
				wantKeys[k] = true
			}
		}
	}
	setFlags := func(ip netip.Addr, flags uint32) error {
		err := pol.SetEnforcement(ip, flags)
		if err != nil && errors.Is(err, pmaps.ErrNoEndpoint) {
			return nil
		}
		if err == nil {
			ch.EndpointsChanged++
		}
		return err
	}

	// 1. Enforcement on, where it grows.
	for ip, ep := range st.Endpoints {
		if have := haveFlags[ip]; have|ep.Flags != have {
			if err := setFlags(ip, have|ep.Flags); err != nil {
				return ch, err
			}
		}
	}
	// 2. Identities.
	for pfx, id := range st.Identities {
		if have, ok := haveIDs[pfx]; !ok || have != id {
			if err := pol.SetIdentity(pfx, id); err != nil {
				return ch, err
			}
			haveIDs[pfx] = id
			ch.IdentitiesSet++
		}
	}
	for pfx, id := range st.CIDRs {
		if have, ok := haveCIDRs[pfx]; !ok || have != id {
			if err := pol.SetCIDRIdentity(pfx, id); err != nil {
				return ch, err
			}
			haveCIDRs[pfx] = id
			ch.IdentitiesSet++
		}
	}
	// 3. Stale rules out, then new ones in.
	for k := range haveKeys {
		if !wantKeys[k] {
			if err := pol.DeleteKey(k); err != nil {
				return ch, err
			}
			delete(haveKeys, k)
			ch.KeysDeleted++
		}
	}
	for k := range wantKeys {
		if _, ok := haveKeys[k]; !ok {
			if err := pol.PutKey(k); err != nil {
				return ch, err
			}
			haveKeys[k] = 0
			ch.KeysAdded++
		}
	}
	// 4. Enforcement as wanted (off where no policy selects any more). A
	// new pod the state does not know yet stays closed.
	for ip, have := range haveFlags {
		if have&pmaps.EndpointPolicyPending != 0 && !st.Local[ip] {
			continue
		}
		if want := st.Endpoints[ip].Flags; want != have {
			if err := setFlags(ip, want); err != nil {
				return ch, err
			}
		}
	}
	// 5. Identities no one has any more.
	for pfx := range haveIDs {
		if _, ok := st.Identities[pfx]; !ok {
			if err := pol.DeleteIdentity(pfx); err != nil {
				return ch, err
			}
			delete(haveIDs, pfx)
			ch.IdentitiesDeleted++
		}
	}
	for pfx := range haveCIDRs {
		if _, ok := st.CIDRs[pfx]; !ok {
			if err := pol.DeleteCIDRIdentity(pfx); err != nil {
				return ch, err
			}
			delete(haveCIDRs, pfx)
			ch.IdentitiesDeleted++
		}
	}
	return ch, nil
}

func (c Changes) String() string {
	return fmt.Sprintf("identities +%d -%d, keys +%d -%d, endpoints %d",
		c.IdentitiesSet, c.IdentitiesDeleted, c.KeysAdded, c.KeysDeleted, c.EndpointsChanged)
}
