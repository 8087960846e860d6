package progrun

import (
	"errors"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Where the probe says the kernel takes IngressIfindex, a program reading
// skb->ingress_ifindex sees the value the context set; where it says not,
// the kernel refuses such a context.
func TestIngressIfindexReachesTheProgram(t *testing.T) {
	if err := CheckLayout(); err != nil {
		t.Fatal(err)
	}
	probe := IngressIfindex()
	if probe != nil && !errors.Is(probe, ErrNoIngressIfindex) {
		t.Fatal(probe)
	}
	var ctx SkbContext
	prog := load(t, ebpf.SchedCLS,
		asm.LoadMem(asm.R0, asm.R1, int16(unsafe.Offsetof(ctx.IngressIfindex)), asm.Word),
		asm.Return())
	ret, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64), Context: SkbContext{IngressIfindex: 7}})
	switch {
	case probe == nil && (err != nil || ret != 7):
		t.Errorf("program saw ingress_ifindex %d (%v), want 7", ret, err)
	case probe != nil && err == nil:
		t.Errorf("probe said %v, yet the kernel took the context (program saw %d)", probe, ret)
	}
}

// Where the probe says the kernel takes an xdp_md context, a program sees
// data_end where the context put it; where it says not, the kernel refuses.
func TestXDPContextSetsDataEnd(t *testing.T) {
	probe := XDPContextSupported()
	if probe != nil && !errors.Is(probe, ErrNoXDPContext) {
		t.Fatal(probe)
	}
	// r0 = ctx->data_end - ctx->data
	prog := load(t, ebpf.XDP,
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R0, asm.R1, 4, asm.Word),
		asm.Sub.Reg(asm.R0, asm.R2),
		asm.Return())
	ret, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 14), Context: XDPContext{DataEnd: 3}})
	switch {
	case probe == nil && (err != nil || ret != 3):
		t.Errorf("program saw %d bytes (%v), want 3", ret, err)
	case probe != nil && err == nil:
		t.Errorf("probe said %v, yet the kernel took the context (program saw %d bytes)", probe, ret)
	}
}

func load(t *testing.T, typ ebpf.ProgramType, insns ...asm.Instruction) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: typ, License: "GPL", Instructions: insns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}
