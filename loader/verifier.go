package loader

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
)

// VerifierBudget is the kernel's limit on the instructions its verifier
// walks for one program (BPF_COMPLEXITY_LIMIT_INSNS).
const VerifierBudget = 1_000_000

// VerifierStats is what the running kernel's verifier made of one program.
type VerifierStats struct {
	Program string `json:"program"`
	// Insns is the verifier's "processed N insns": instructions walked
	// over every path it explored, against VerifierBudget.
	Insns int `json:"insns"`
	// States is the verifier's total_states.
	States int `json:"states"`
	// LoadMs is the wall time of loading the program, verifier included.
	LoadMs float64 `json:"loadMs"`
	Error  string  `json:"error,omitempty"`
}

var (
	processedRe = regexp.MustCompile(`processed (\d+) insns`)
	statesRe    = regexp.MustCompile(`total_states (\d+)`)
)

// Verify loads every program podpath ships, on its own with small unpinned
// maps (map sizes do not change what the verifier walks), and reports the
// verifier's statistics. A program the kernel rejects has Error set; the
// error returned is for what keeps Verify from trying at all.
func Verify() ([]VerifierStats, error) {
	specs, err := maps.Specs() // lifts RLIMIT_MEMLOCK where it applies
	if err != nil {
		return nil, err
	}
	sock, err := maps.SocketSpec()
	if err != nil {
		return nil, err
	}
	all := map[string]*ebpf.CollectionSpec{}
	for name, s := range specs {
		all[name] = s
	}
	// The socket programs share one object; each is verified alone.
	for name := range sock.Programs {
		one := sock.Copy()
		for other := range one.Programs {
			if other != name {
				delete(one.Programs, other)
			}
		}
		all[name] = one
	}
	// The uplink's programs and from_pod take other ways with the
	// overlay: verified as the loader builds them in vxlan mode too, under
	// their name and OverlaySuffix.
	for _, name := range []string{maps.ProgFromNetdev, maps.ProgToNetdev, maps.ProgFromPod} {
		one := all[name].Copy()
		if _, ok := one.Variables[maps.VarOverlayPort]; !ok {
			return nil, fmt.Errorf("%s has no variable %s", name, maps.VarOverlayPort)
		}
		if err := setOverlayVars(one, DefaultVXLANPort, netip.MustParseAddr("192.0.2.1")); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		all[name+OverlaySuffix] = one
	}
	names := make([]string, 0, len(all))
	for name := range all {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]VerifierStats, 0, len(names))
	for _, name := range names {
		out = append(out, verifyOne(name, all[name]))
	}
	return out, nil
}

// OverlaySuffix marks the statistics of a program verified as it is built
// for a node with the overlay.
const OverlaySuffix = " (overlay)"

// VerifyDryRun loads the programs built for the dry run (podpath trace,
// loader.LoadDryRun) the same way, one at a time: they must pass on every
// kernel the node's own do, within the same stack.
func VerifyDryRun() ([]VerifierStats, error) {
	specs, err := maps.DrySpecs()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(specs))
	for name := range specs {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]VerifierStats, 0, len(names))
	for _, name := range names {
		out = append(out, verifyOne(name, specs[name]))
	}
	return out, nil
}

func verifyOne(name string, spec *ebpf.CollectionSpec) VerifierStats {
	v := VerifierStats{Program: name}
	name = strings.TrimSuffix(name, OverlaySuffix)
	for _, ms := range spec.Maps {
		ms.Pinning = ebpf.PinNone
		if ms.MaxEntries > 1024 && ms.Type != ebpf.Array && ms.Type != ebpf.PerCPUArray && ms.Type != ebpf.RingBuf {
			ms.MaxEntries = 1024
		}
		if ms.InnerMap != nil && ms.InnerMap.MaxEntries > 1024 {
			ms.InnerMap.MaxEntries = 1024
		}
	}
	start := time.Now()
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	})
	v.LoadMs = float64(time.Since(start).Microseconds()) / 1000
	if err != nil {
		v.Error = err.Error()
		return v
	}
	defer coll.Close()
	prog := coll.Programs[name]
	if prog == nil {
		v.Error = fmt.Sprintf("object has no program %s", name)
		return v
	}
	if m := processedRe.FindStringSubmatch(prog.VerifierLog); m != nil {
		v.Insns, _ = strconv.Atoi(m[1])
	}
	if m := statesRe.FindStringSubmatch(prog.VerifierLog); m != nil {
		v.States, _ = strconv.Atoi(m[1])
	}
	if v.Insns == 0 {
		v.Error = "the verifier's log has no instruction count"
	}
	return v
}
