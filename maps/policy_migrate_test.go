package maps_test

import (
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/podpath/podpath/maps"
)

// A node upgraded from the single-trie policy layout keeps its policy: the
// loader moves the legacy trie's keys (exact ones to policy_rules, port
// prefixes to policy_ranges, their pod flagged), copies pods' /32s from
// the ipcache to identities, and unpins the legacy trie.
func TestMigratePolicyFromSingleTrie(t *testing.T) {
	n := newNode(t)
	n.mustInit(t)
	legacy, err := ebpf.NewMap(&ebpf.MapSpec{Name: "policy", Type: ebpf.LPMTrie, KeySize: 16, ValueSize: 8,
		MaxEntries: 1024, Flags: 1 /* BPF_F_NO_PREALLOC */})
	if err != nil {
		t.Fatal(err)
	}
	defer legacy.Close()
	pod, client := netip.MustParseAddr("10.244.1.10"), netip.MustParseAddr("10.244.1.30")
	exact, err := maps.PolicyRule{Endpoint: pod, Direction: maps.PolicyIngress, Identity: 256, Proto: 6, PortFirst: 8080, PortLast: 8080}.Keys()
	if err != nil {
		t.Fatal(err)
	}
	anyProto, _ := maps.PolicyRule{Endpoint: pod, Direction: maps.PolicyEgress, Identity: maps.IdentityAny}.Keys()
	ranged, _ := maps.PolicyRule{Endpoint: pod, Direction: maps.PolicyIngress, Identity: 257, Proto: 17, PortFirst: 9000, PortLast: 9099}.Keys()
	all := append(append(append([]maps.PolicyKey{}, exact...), anyProto...), ranged...)
	for _, k := range all {
		if err := legacy.Put(k, maps.PolicyEntry{Packets: 3}); err != nil {
			t.Fatal(err)
		}
	}
	if err := legacy.Pin(maps.MapPath(n.root, maps.MapPolicyLegacy)); err != nil {
		t.Fatal(err)
	}
	// The old layout's pod identity: a /32 in the ipcache.
	if err := n.openMap(t, maps.MapIPCache).Put(maps.NewIPCacheKey(netip.PrefixFrom(client, 32)), maps.IPCacheEntry{Identity: 256}); err != nil {
		t.Fatal(err)
	}
	eps := maps.NewEndpoints(n.openMap(t, maps.MapEndpoints))
	if err := eps.Put(pod, maps.EndpointInfo{Ifindex: 1, Flags: maps.EndpointPolicyIngress}); err != nil {
		t.Fatal(err)
	}

	n.mustInit(t) // the upgrade
	if _, err := os.Stat(maps.MapPath(n.root, maps.MapPolicyLegacy)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the legacy policy trie is still pinned (%v)", err)
	}
	pol, err := maps.OpenPolicy(n.root)
	if err != nil {
		t.Fatal(err)
	}
	defer pol.Close()
	keys, err := pol.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(all) {
		t.Errorf("%d keys after the upgrade, had %d", len(keys), len(all))
	}
	for _, k := range all {
		if _, ok := keys[k]; !ok {
			t.Errorf("key %v (%s) lost", k, k.Rule())
		}
	}
	rules := n.openMap(t, maps.MapPolicyRules)
	var v maps.PolicyEntry
	for _, k := range append(exact, anyProto...) {
		if err := rules.Lookup(k, &v); err != nil {
			t.Errorf("exact key %s not in %s: %v", k.Rule(), maps.MapPolicyRules, err)
		}
	}
	ids, err := pol.Identities()
	if err != nil {
		t.Fatal(err)
	}
	if ids[netip.PrefixFrom(client, 32)] != 256 {
		t.Errorf("identities %v: want %s as 256", ids, client)
	}
	info, ok, err := eps.Lookup(pod)
	if err != nil || !ok {
		t.Fatalf("endpoint %s: %v %v", pod, ok, err)
	}
	if want := uint32(maps.EndpointPolicyIngress | maps.EndpointPolicyRanges); info.Flags != want {
		t.Errorf("endpoint flags %d, want %d (ingress, ranges)", info.Flags, want)
	}
}
