package progrun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
)

// Return codes of tc and XDP programs (linux/pkt_cls.h, linux/bpf.h).
const (
	TCActOK       = 0
	TCActShot     = 2
	TCActRedirect = 7

	XDPDrop = 1
	XDPPass = 2
)

// Node is every tc and XDP program of one node sharing one set of fresh,
// unpinned maps, as their pins make a node's programs share them: a test
// runs packets through it without seeing or disturbing a real node's state.
type Node struct {
	Programs map[string]*ebpf.Program // by name: maps.ProgFromPod, ...
	Maps     map[string]*ebpf.Map     // by name: maps.MapEndpoints, ...
	// MaglevInner makes a Maglev lookup table of this node's size.
	MaglevInner *ebpf.MapSpec
	colls       []*ebpf.Collection
}

// LoadNode loads the objects of the named programs, sharing their maps.
// sizes overrides the max_entries of the maps it names (small maps load
// faster and change no decision); Maglev tables get maglevSize entries
// (0: as compiled), in the inner maps and in the programs' copy, as the
// loader sets both.
func LoadNode(programs []string, sizes map[string]uint32, maglevSize uint32) (*Node, error) {
	return LoadNodeVars(programs, sizes, maglevSize, nil)
}

// LoadNodeVars is LoadNode with the programs' read-only variables set as
// the loader sets them for a node (maps.VarOverlayPort and the like), each
// in the objects that have it.
func LoadNodeVars(programs []string, sizes map[string]uint32, maglevSize uint32, vars map[string]any) (*Node, error) {
	specs, err := maps.Specs()
	if err != nil {
		return nil, err
	}
	n := &Node{Programs: map[string]*ebpf.Program{}, Maps: map[string]*ebpf.Map{}}
	for _, name := range programs {
		spec := specs[name]
		if spec == nil {
			n.Close()
			return nil, fmt.Errorf("no BPF object has a program %s", name)
		}
		shared := map[string]*ebpf.Map{}
		for mapName, ms := range spec.Maps {
			ms.Pinning = ebpf.PinNone
			if size, ok := sizes[mapName]; ok {
				ms.MaxEntries = size
			}
			if m, ok := n.Maps[mapName]; ok {
				shared[mapName] = m
			}
		}
		if ms := spec.Maps[maps.MapMaglev]; ms != nil && ms.InnerMap != nil {
			if maglevSize != 0 {
				ms.InnerMap.MaxEntries = maglevSize
			}
			n.MaglevInner = ms.InnerMap
		}
		// The trace events' hooks in, as the loader builds them while
		// tracing is on: tests switch tracing through event_config.
		if v := spec.Variables[maps.VarTraceCapable]; v != nil {
			if err := v.Set(uint32(1)); err != nil {
				n.Close()
				return nil, err
			}
		}
		for name, value := range vars {
			if v := spec.Variables[name]; v != nil {
				if err := v.Set(value); err != nil {
					n.Close()
					return nil, fmt.Errorf("%s: set %s: %w", name, name, err)
				}
			}
		}
		if v := spec.Variables[maps.VarMaglevTableSize]; v != nil && maglevSize != 0 {
			if err := v.Set(maglevSize); err != nil {
				n.Close()
				return nil, err
			}
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: shared})
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("load %s (needs root): %w", name, err)
		}
		n.colls = append(n.colls, coll)
		n.Programs[name] = coll.Programs[name]
		for mapName, m := range coll.Maps {
			// .rodata and friends are each object's own.
			if _, ok := n.Maps[mapName]; !ok && !strings.HasPrefix(mapName, ".") {
				n.Maps[mapName] = m
			}
		}
	}
	return n, nil
}

// Close releases every program and map.
func (n *Node) Close() {
	for _, c := range n.colls {
		c.Close()
	}
}

// RequireIngressIfindex skips tb on a kernel whose BPF_PROG_RUN cannot say
// which device a packet came in on; elsewhere says what covers the path
// on that kernel instead.
func RequireIngressIfindex(tb testing.TB, elsewhere string) {
	tb.Helper()
	if err := IngressIfindex(); errors.Is(err, ErrNoIngressIfindex) {
		tb.Skipf("%v; %s", err, elsewhere)
	} else if err != nil {
		tb.Fatal(err)
	}
}

// RunTC runs a tc program once on frame with ctx and returns its verdict
// and the frame as it leaves the program. A context naming the incoming
// device fails with ErrNoIngressIfindex where the kernel refuses one.
func RunTC(prog *ebpf.Program, ctx SkbContext, frame []byte) (uint32, []byte, error) {
	ret, out, _, err := runTC(prog, ctx, frame, false)
	return ret, out, err
}

// RunTCContext is RunTC that also returns the head of the context as the
// program left it (the mark, the priority: what a program may write).
func RunTCContext(prog *ebpf.Program, ctx SkbContext, frame []byte) (uint32, []byte, SkbContext, error) {
	return runTC(prog, ctx, frame, true)
}

// skbContextOutSize holds a whole __sk_buff: the kernel refuses to copy
// the context out into less (ENOSPC).
const skbContextOutSize = 512

func runTC(prog *ebpf.Program, ctx SkbContext, frame []byte, ctxOut bool) (uint32, []byte, SkbContext, error) {
	var after SkbContext
	if ctx.IngressIfindex != 0 {
		if err := IngressIfindex(); err != nil {
			return 0, nil, after, err
		}
	}
	opts := ebpf.RunOptions{
		Data:    slices.Clone(frame),
		DataOut: make([]byte, len(frame)+256),
		Context: ctx,
		Repeat:  1,
	}
	var raw []byte
	if ctxOut {
		raw = make([]byte, skbContextOutSize)
		opts.ContextOut = raw
	}
	ret, err := prog.Run(&opts)
	if err == nil && ctxOut {
		err = binary.Read(bytes.NewReader(raw), binary.NativeEndian, &after)
	}
	return ret, opts.DataOut, after, err
}

// ethHeaderLen is the least BPF_PROG_RUN takes as an XDP frame.
const ethHeaderLen = 14

// RunXDP runs an XDP program once on frame and returns its verdict and the
// frame as it leaves the program. BPF_PROG_RUN wants at least 14 bytes of
// input; a shorter frame is padded to 14 and the context's data_end placed
// at the frame's end, so the program sees exactly len(frame) bytes. That
// fails with ErrNoXDPContext where the kernel takes no XDP context.
func RunXDP(prog *ebpf.Program, frame []byte) (uint32, []byte, error) {
	in := slices.Clone(frame)
	opts := ebpf.RunOptions{Repeat: 1}
	if len(in) < ethHeaderLen {
		if err := XDPContextSupported(); err != nil {
			return 0, nil, err
		}
		opts.Context = XDPContext{DataEnd: uint32(len(in))}
		in = append(in, make([]byte, ethHeaderLen-len(in))...)
	}
	opts.Data = in
	opts.DataOut = make([]byte, len(in)+256)
	ret, err := prog.Run(&opts)
	if err != nil {
		return 0, nil, err
	}
	if !slices.Equal(opts.DataOut[len(frame):], in[len(frame):]) {
		return ret, opts.DataOut, fmt.Errorf("the program changed the padding after the frame: % x", opts.DataOut[len(frame):])
	}
	return ret, opts.DataOut[:len(frame)], nil
}
