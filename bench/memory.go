package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// runMemory loads the datapath with loader.Init into a temporary pin root,
// at the default size and at a large one, and reads from the kernel how
// much memory each map and program holds (fdinfo memlock, which on 6.4+
// kernels is the map's actual usage): empty, then with the endpoints map
// filled to capacity. Memory is read, not timed, so once is enough.
func (e *env) runMemory(ctx context.Context) error {
	for _, size := range []struct {
		label string
		eps   uint32
	}{
		{fmt.Sprintf("default (%d endpoints)", loader.DefaultMaxEndpoints), loader.DefaultMaxEndpoints},
		{fmt.Sprintf("large (%d endpoints)", e.cfg.LargeEps), e.cfg.LargeEps},
	} {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := e.memoryAt(size.label, size.eps); err != nil {
			return fmt.Errorf("%s: %w", size.label, err)
		}
	}
	return nil
}

func (e *env) memoryAt(label string, maxEps uint32) (err error) {
	nsn, rmNS, err := newNS("mem")
	if err != nil {
		return err
	}
	defer rmNS()
	tmp, err := os.MkdirTemp("", "podpath-bench-mem-")
	if err != nil {
		return err
	}
	defer cleanup.add("dir "+tmp, func() error { return os.RemoveAll(tmp) })()
	root := filepath.Join(loader.BPFFSMount, fmt.Sprintf("podpath-bench-mem-%d", os.Getpid()))
	defer cleanup.add("pins "+root, func() error {
		nsn.Do(func(ns.NetNS) error { return loader.Reset(root, tmp) })
		return os.RemoveAll(root)
	})()

	err = nsn.Do(func(ns.NetNS) error {
		return loader.Init(loader.Config{
			PinRoot: root, StateDir: tmp,
			PodCIDR:      netip.MustParsePrefix("10.0.0.0/8"),
			MaxEndpoints: maxEps,
		})
	})
	if err != nil {
		return fmt.Errorf("loader.Init: %w", err)
	}

	var total uint64
	for _, name := range maps.AllMaps {
		b, err := mapMemlock(root, name)
		if err != nil {
			return err
		}
		total += b
		e.recordMemory(name+" (empty)", label, b)
	}
	for _, name := range []string{maps.ProgFromPod, maps.ProgXDPNetdev} {
		p, err := loader.LoadPinnedProgram(root, name)
		if err != nil {
			return err
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			return err
		}
		b, ok := info.Memlock()
		if !ok {
			return fmt.Errorf("program %s: kernel reports no memlock", name)
		}
		total += b
		e.recordMemory("program "+name, label, b)
	}
	e.recordMemory("total (endpoints empty)", label, total)

	emptyEps, _ := mapMemlock(root, maps.MapEndpoints)
	if err := fillEndpoints(root, maxEps); err != nil {
		return err
	}
	full, err := mapMemlock(root, maps.MapEndpoints)
	if err != nil {
		return err
	}
	e.recordMemory(maps.MapEndpoints+" (full)", label, full)
	e.recordMemory("total (endpoints full)", label, total-emptyEps+full)
	slog.Info("memory", "size", label, "total_empty_KiB", total/1024, "endpoints_full_KiB", full/1024)
	return nil
}

func (e *env) recordMemory(metric, label string, bytes uint64) {
	e.res.record(famMemory, metric, label, "MiB", lower, float64(bytes)/(1<<20))
}

func mapMemlock(root, name string) (uint64, error) {
	m, err := maps.OpenPinned(root, name)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		return 0, fmt.Errorf("map %s info: %w", name, err)
	}
	b, ok := info.Memlock()
	if !ok {
		// A map allocated on demand (BPF_F_NO_PREALLOC) that holds
		// nothing uses nothing: the kernel reports 0, which reads as
		// "not reported".
		if info.Flags&unix.BPF_F_NO_PREALLOC != 0 {
			return 0, nil
		}
		return 0, fmt.Errorf("map %s: kernel reports no memlock", name)
	}
	return b, nil
}

// fillEndpoints writes n distinct endpoints, in batches.
func fillEndpoints(root string, n uint32) error {
	m, err := maps.OpenPinned(root, maps.MapEndpoints)
	if err != nil {
		return err
	}
	defer m.Close()
	const batch = 1 << 15
	keys := make([]maps.EndpointKey, 0, batch)
	vals := make([]maps.EndpointInfo, 0, batch)
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		if _, err := m.BatchUpdate(keys, vals, &ebpf.BatchOptions{}); err != nil {
			return fmt.Errorf("fill endpoints: %w", err)
		}
		keys, vals = keys[:0], vals[:0]
		return nil
	}
	for i := range n {
		a := 10<<24 | (i + 1)
		ip := netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
		var v maps.EndpointInfo
		v.Ifindex = i + 1
		keys = append(keys, maps.NewEndpointKey(ip))
		vals = append(vals, v)
		if len(keys) == batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
