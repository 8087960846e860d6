package maps

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// ErrLayoutChanged is returned when a pinned map's key or value layout
// differs from the one this build of podpath was compiled with.
var ErrLayoutChanged = errors.New("map layout changed")

// Layout describes a map's key and value as a canonical string derived from
// BTF: member names, offsets, sizes and kinds. Two layouts are equal exactly
// when user space and the datapath read the same bytes the same way.
func Layout(key, value btf.Type) string {
	var b strings.Builder
	b.WriteString("key=")
	describe(&b, key, 0)
	b.WriteString(" value=")
	describe(&b, value, 0)
	return b.String()
}

func describe(b *strings.Builder, t btf.Type, depth int) {
	if depth > 16 {
		b.WriteString("...")
		return
	}
	switch t := btf.UnderlyingType(t).(type) {
	case nil:
		b.WriteString("none")
	case *btf.Int:
		fmt.Fprintf(b, "int%d", t.Size*8)
		if t.Encoding&btf.Signed != 0 {
			b.WriteString("s")
		}
	case *btf.Enum:
		fmt.Fprintf(b, "enum%d", t.Size*8)
	case *btf.Array:
		fmt.Fprintf(b, "[%d]", t.Nelems)
		describe(b, t.Type, depth+1)
	case *btf.Struct:
		describeMembers(b, "struct", t.Size, t.Members, depth)
	case *btf.Union:
		describeMembers(b, "union", t.Size, t.Members, depth)
	case *btf.Pointer:
		b.WriteString("ptr")
	default:
		fmt.Fprintf(b, "%T", t)
	}
}

func describeMembers(b *strings.Builder, kind string, size uint32, members []btf.Member, depth int) {
	fmt.Fprintf(b, "%s%d{", kind, size*8)
	for i, m := range members {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(b, "%s@%d", m.Name, m.Offset)
		if m.BitfieldSize > 0 {
			fmt.Fprintf(b, ":%d", m.BitfieldSize)
		}
		b.WriteByte(' ')
		describe(b, m.Type, depth+1)
	}
	b.WriteByte('}')
}

// SpecLayout is the layout a map spec (this build) expects.
func SpecLayout(ms *ebpf.MapSpec) string { return Layout(ms.Key, ms.Value) }

// PinnedLayout reads the layout of a loaded map from the BTF the kernel holds
// for it.
func PinnedLayout(m *ebpf.Map) (string, error) {
	key, value, err := pinnedTypes(m)
	if err != nil {
		return "", err
	}
	return Layout(key, value), nil
}

func pinnedTypes(m *ebpf.Map) (key, value btf.Type, err error) {
	info, err := mapBTFInfo(m)
	if err != nil {
		return nil, nil, err
	}
	if info.btfID == 0 {
		return nil, nil, fmt.Errorf("map carries no BTF")
	}
	h, err := btf.NewHandleFromID(btf.ID(info.btfID))
	if err != nil {
		return nil, nil, fmt.Errorf("open map BTF: %w", err)
	}
	defer h.Close()
	spec, err := h.Spec(nil)
	if err != nil {
		return nil, nil, fmt.Errorf("read map BTF: %w", err)
	}
	if key, err = spec.TypeByID(btf.TypeID(info.keyTypeID)); err != nil {
		return nil, nil, fmt.Errorf("map key type: %w", err)
	}
	if value, err = spec.TypeByID(btf.TypeID(info.valueTypeID)); err != nil {
		return nil, nil, fmt.Errorf("map value type: %w", err)
	}
	return key, value, nil
}

// CheckLayout returns an error wrapping ErrLayoutChanged when the pinned
// map m would be misread by code built from spec. A member the pinned
// layout calls reserved (or reserved...) may have been given a name and a
// use since, at the same offset and of the same type: that is what it was
// reserved for, and the bytes read the same (zero, in entries written
// before).
func CheckLayout(spec *ebpf.MapSpec, m *ebpf.Map) error {
	if spec.Type == ebpf.HashOfMaps || spec.Type == ebpf.ArrayOfMaps || spec.Type == ebpf.RingBuf {
		// Values are map ids, not data, or a ring buffer has neither key
		// nor value: the kernel keeps no BTF for them. Type, sizes and
		// flags are compared by MapSpec.Compatible.
		return nil
	}
	key, value, err := pinnedTypes(m)
	if err != nil {
		return fmt.Errorf("map %s: %w", spec.Name, err)
	}
	want, have := SpecLayout(spec), Layout(key, value)
	if have == want {
		return nil
	}
	if claimsReserved(key, spec.Key, 0) && claimsReserved(value, spec.Value, 0) {
		return nil
	}
	return fmt.Errorf("map %s: pinned %s, this build expects %s: %w", spec.Name, have, want, ErrLayoutChanged)
}

// claimsReserved says whether want reads the bytes of have the same way,
// up to members have calls reserved that want names otherwise.
func claimsReserved(have, want btf.Type, depth int) bool {
	if depth > 16 {
		return false
	}
	hs, hok := btf.UnderlyingType(have).(*btf.Struct)
	ws, wok := btf.UnderlyingType(want).(*btf.Struct)
	if !hok || !wok {
		var a, b strings.Builder
		describe(&a, have, depth)
		describe(&b, want, depth)
		return a.String() == b.String()
	}
	if hs.Size != ws.Size || len(hs.Members) != len(ws.Members) {
		return false
	}
	for i, hm := range hs.Members {
		wm := ws.Members[i]
		if hm.Offset != wm.Offset || hm.BitfieldSize != wm.BitfieldSize {
			return false
		}
		if hm.Name != wm.Name && !strings.HasPrefix(hm.Name, "reserved") {
			return false
		}
		if !claimsReserved(hm.Type, wm.Type, depth+1) {
			return false
		}
	}
	return true
}

// bpfMapInfo is the head of struct bpf_map_info (linux/bpf.h), up to the
// BTF type ids, which cilium/ebpf does not expose.
type bpfMapInfo struct {
	typ, id, keySize, valueSize, maxEntries, mapFlags uint32
	name                                              [16]byte
	ifindex, btfVmlinuxValueTypeID                    uint32
	netnsDev, netnsIno                                uint64
	btfID, keyTypeID, valueTypeID, btfVmlinuxID       uint32
	mapExtra                                          uint64
}

func mapBTFInfo(m *ebpf.Map) (*bpfMapInfo, error) {
	var info bpfMapInfo
	attr := struct {
		fd, infoLen uint32
		info        uint64
	}{uint32(m.FD()), uint32(unsafe.Sizeof(info)), uint64(uintptr(unsafe.Pointer(&info)))}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET_INFO_BY_FD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(m)
	runtime.KeepAlive(&info)
	if errno != 0 {
		return nil, fmt.Errorf("BPF_OBJ_GET_INFO_BY_FD: %w", errno)
	}
	return &info, nil
}
