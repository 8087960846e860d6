package cni

import (
	"log/slog"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
)

// Status reports whether the plugin can serve ADD: it fails with code 50
// (plugin not available) when the node's datapath is not loaded, that is
// when a pinned map, from_pod or to_pod is missing (a node initialised by
// a build without to_pod needs `podpath node init` again), or when the pod
// CIDR is unknown.
// An exhausted address pool is not a failure: the node still serves its
// existing pods and frees addresses as they go, and marking the whole node's
// network not ready would be worse than failing the next ADD with a clear
// error. It is logged.
func Status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData, false)
	if err != nil {
		return err
	}
	notAvailable := func(err error) error {
		return newError(types.ErrPluginNotAvailable, "%v", err)
	}
	for _, name := range maps.AllMaps {
		m, err := maps.OpenPinned(conf.PinRoot, name)
		if err != nil {
			return notAvailable(err)
		}
		m.Close()
	}
	for _, p := range podPrograms {
		prog, err := loader.LoadPinnedProgram(conf.PinRoot, p.name)
		if err != nil {
			return notAvailable(err)
		}
		prog.Close()
	}
	if !conf.PodCIDR.IsValid() {
		return newError(types.ErrPluginNotAvailable, "no podCIDR in the network configuration and none recorded in %s (run `podpath node init`)", conf.StateDir)
	}
	if err := validPool(conf.PodCIDR); err != nil {
		return err
	}

	p, err := openPool(conf.StateDir, conf.Network, conf.PodCIDR)
	if err != nil {
		return err
	}
	defer p.Close()
	all, err := p.list()
	if err != nil {
		return err
	}
	used := 0
	for _, a := range all {
		if conf.PodCIDR.Contains(a.Addr) {
			used++
		}
	}
	if size := poolSize(conf.PodCIDR); used >= size {
		slog.Warn("address pool exhausted", "podCIDR", conf.PodCIDR, "inUse", used, "size", size)
	}
	return nil
}

// poolSize is how many pod addresses a pool holds.
func poolSize(p netip.Prefix) int { return 1<<(32-p.Bits()) - 2 }
