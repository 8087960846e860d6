package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
)

// The Service path of bpf_prog_run: a ClusterIP whose one backend is
// benchDst, on a node loaded as `podpath node init` loads one, programmed
// by the services package as the agent programs it.
var (
	benchVIP     = netip.MustParseAddr("10.96.100.10")
	benchVIPPort = int32(benchDport)
	benchTarget  = int32(8080)
)

const (
	pathService     = "from_pod SYN to a ClusterIP, local backend, tracked (one run per call)"
	pathNoopOneRun  = "noop tc (TC_ACT_OK), one run per call"
	pathPodToPodSYN = pathTracingOff
)

// serviceNode loads a node into a netns and a temporary pin root, registers
// benchSrc and benchDst, and programs the ClusterIP; it returns the pinned
// from_pod, the node's counters and what removes it all.
func serviceNode(ctx context.Context) (prog *ebpf.Program, counters *ebpf.Map, closer func() error, err error) {
	nsn, rmNS, err := newNS("svcprog")
	if err != nil {
		return nil, nil, nil, err
	}
	tmp, err := os.MkdirTemp("", "podpath-bench-svcprog-")
	if err != nil {
		rmNS()
		return nil, nil, nil, err
	}
	rmTmp := cleanup.add("dir "+tmp, func() error { return os.RemoveAll(tmp) })
	root := filepath.Join(loader.BPFFSMount, fmt.Sprintf("podpath-bench-svcprog-%d", os.Getpid()))
	rmPins := cleanup.add("pins "+root, func() error {
		nsn.Do(func(ns.NetNS) error { return loader.Reset(root, tmp) })
		return os.RemoveAll(root)
	})
	var closers []func() error
	closer = func() error { return closeAll(append([]func() error{rmNS, rmTmp, rmPins}, closers...)) }
	defer func() {
		if err != nil {
			closer()
		}
	}()
	err = nsn.Do(func(ns.NetNS) error {
		return loader.Init(loader.Config{PinRoot: root, StateDir: tmp, PodCIDR: netip.MustParsePrefix("10.244.0.0/16")})
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("loader.Init: %w", err)
	}
	eps, err := maps.OpenEndpoints(root)
	if err != nil {
		return nil, nil, nil, err
	}
	defer eps.Close()
	for _, p := range []benchPod{benchSrc, benchDst} {
		if err := eps.Put(p.IP, p.info()); err != nil {
			return nil, nil, nil, err
		}
	}
	m, err := services.Open(root, tmp)
	if err != nil {
		return nil, nil, nil, err
	}
	defer m.Close()
	svc := services.Service{
		Namespace: "bench", Name: "progrun", Type: services.TypeClusterIP, ClusterIP: benchVIP,
		Ports:    []services.Port{{Name: "http", Protocol: services.ProtocolTCP, Port: benchVIPPort, TargetPort: benchTarget}},
		Backends: []services.Backend{{IP: benchDst.IP, Ready: true, Local: true}},
	}
	if _, err := m.Apply(ctx, []services.Service{svc}); err != nil {
		return nil, nil, nil, fmt.Errorf("program the service: %w", err)
	}
	if prog, err = loader.LoadPinnedProgram(root, maps.ProgFromPod); err != nil {
		return nil, nil, nil, err
	}
	closers = append(closers, prog.Close)
	if counters, err = ebpf.LoadPinnedMap(maps.MapPath(root, maps.MapCounters), nil); err != nil {
		return nil, nil, nil, err
	}
	closers = append(closers, counters.Close)
	return prog, counters, closer, nil
}
