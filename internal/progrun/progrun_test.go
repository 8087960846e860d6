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
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R0, asm.R1, int16(unsafe.Offsetof(ctx.IngressIfindex)), asm.Word),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	ret, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64), Context: SkbContext{IngressIfindex: 7}})
	switch {
	case probe == nil && (err != nil || ret != 7):
		t.Errorf("program saw ingress_ifindex %d (%v), want 7", ret, err)
	case probe != nil && err == nil:
		t.Errorf("probe said %v, yet the kernel took the context (program saw %d)", probe, ret)
	}
}
