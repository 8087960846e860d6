package loader

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
)

// configureSNAT writes the SNAT address, port range and the destinations
// that are not masqueraded. With no uplink (or NoSNAT) SNAT is off.
func configureSNAT(c Config, uplinkAddrs []nodeAddr) error {
	cfgMap, err := maps.OpenPinned(c.PinRoot, maps.MapNatConfig)
	if err != nil {
		return err
	}
	defer cfgMap.Close()
	nc := maps.NatConfig{PortMin: c.SNATPortMin, PortMax: c.SNATPortMax, Family: maps.FamilyIPv4}
	addr := c.SNATAddr
	if !addr.IsValid() {
		for _, a := range uplinkAddrs {
			if a.ip.Is4() {
				addr = a.ip
				break
			}
		}
	}
	if !c.NoSNAT && len(c.Uplinks) > 0 {
		if !addr.IsValid() {
			return fmt.Errorf("SNAT: uplinks %v have no IPv4 address; set one or disable SNAT", c.Uplinks)
		}
		nc.Addr = maps.Addr16(addr)
		nc.Enabled = 1
	}
	zero := uint32(0)
	if err := cfgMap.Update(&zero, &nc, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write SNAT config: %w", err)
	}
	return writeNonMasq(c)
}

// writeNonMasq makes the nonmasq trie hold exactly the pod CIDR, the
// cluster CIDRs and the extra non-masquerade CIDRs.
func writeNonMasq(c Config) error {
	m, err := maps.OpenPinned(c.PinRoot, maps.MapNonmasq)
	if err != nil {
		return err
	}
	defer m.Close()
	want := map[maps.NonmasqKey]uint32{}
	for _, p := range append(append([]netip.Prefix{c.PodCIDR}, c.ClusterCIDRs...), c.NonMasqCIDRs...) {
		if !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		want[maps.NonmasqKey{Prefixlen: 32 + uint32(p.Bits()), Family: maps.FamilyIPv4, Addr: maps.Addr16(p.Addr())}] = 1
	}
	if err := syncMap(m, want); err != nil {
		return fmt.Errorf("nonmasq ranges: %w", err)
	}
	return nil
}
