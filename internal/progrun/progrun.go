// Package progrun holds what tests need to run tc programs with
// BPF_PROG_RUN as a device would: the __sk_buff context they may set, a
// check of it against the running kernel, and a probe of whether the kernel
// lets a test set the incoming device at all.
package progrun

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// SkbContext is the head of struct __sk_buff (linux/bpf.h) up to the fields
// BPF_PROG_RUN lets a test set; the kernel zero-fills the rest. The kernel
// copies IngressIfindex into skb->skb_iif, which is what tc ingress on a
// veth sees; Ifindex (the device) stays 0, meaning loopback, because the
// kernel insists it name a real device.
type SkbContext struct {
	Len, PktType, Mark, QueueMapping, Protocol uint32
	VlanPresent, VlanTCI, VlanProto, Priority  uint32
	IngressIfindex                             uint32
	Ifindex                                    uint32
}

// CheckLayout compares SkbContext with the running kernel's __sk_buff, so
// a context field can never silently land in the wrong place.
var CheckLayout = sync.OnceValue(func() error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("load kernel BTF: %w", err)
	}
	var skb *btf.Struct
	if err := spec.TypeByName("__sk_buff", &skb); err != nil {
		return err
	}
	var ctx SkbContext
	want := map[string]uintptr{
		"ingress_ifindex": unsafe.Offsetof(ctx.IngressIfindex),
		"ifindex":         unsafe.Offsetof(ctx.Ifindex),
	}
	for _, m := range skb.Members {
		off, ok := want[m.Name]
		if !ok {
			continue
		}
		if uintptr(m.Offset.Bytes()) != off {
			return fmt.Errorf("__sk_buff.%s is at byte %d, SkbContext has it at %d", m.Name, m.Offset.Bytes(), off)
		}
		delete(want, m.Name)
	}
	if len(want) > 0 {
		return fmt.Errorf("kernel __sk_buff lacks %v", want)
	}
	return nil
})

// ErrNoIngressIfindex says the kernel's BPF_PROG_RUN refuses a context
// that names the incoming device (as 5.10's does, with EINVAL), so a test
// cannot present a packet as arriving on a given veth.
var ErrNoIngressIfindex = errors.New("this kernel's BPF_PROG_RUN refuses ingress_ifindex in the context (EINVAL), so a test cannot say which device a packet came in on")

// IngressIfindex tells whether BPF_PROG_RUN takes SkbContext.IngressIfindex:
// nil, ErrNoIngressIfindex, or the error that kept the probe from running.
var IngressIfindex = sync.OnceValue(func() error {
	return probeRun(ebpf.SchedCLS, ErrNoIngressIfindex, &ebpf.RunOptions{
		Data:    make([]byte, 64),
		Context: SkbContext{IngressIfindex: 1},
	})
})

// probeRun runs a program of type typ that returns 0 with opts and tells
// whether the kernel took them: nil, refused (on EINVAL), or the error
// that kept the probe from running.
func probeRun(typ ebpf.ProgramType, refused error, opts *ebpf.RunOptions) error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         typ,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("probe BPF_PROG_RUN: %w", err)
	}
	defer prog.Close()
	if _, err := prog.Run(opts); errors.Is(err, unix.EINVAL) {
		return refused
	} else if err != nil {
		return fmt.Errorf("probe BPF_PROG_RUN: %w", err)
	}
	return nil
}

// XDPContext is struct xdp_md (linux/bpf.h), which BPF_PROG_RUN takes as
// the context of an XDP program on kernels that allow one.
type XDPContext struct {
	Data, DataEnd, DataMeta      uint32
	IngressIfindex, RxQueueIndex uint32
	EgressIfindex                uint32
}

// ErrNoXDPContext says the kernel's BPF_PROG_RUN takes no xdp_md context
// for XDP programs, so a test cannot place data_end before the end of the
// data it passes, and so cannot present a frame shorter than the 14 bytes
// the kernel insists on.
var ErrNoXDPContext = errors.New("this kernel's BPF_PROG_RUN takes no xdp_md context (EINVAL), so a test cannot present a frame shorter than 14 bytes")

// XDPContextSupported tells whether BPF_PROG_RUN takes an XDPContext: nil,
// ErrNoXDPContext, or the error that kept the probe from running.
var XDPContextSupported = sync.OnceValue(func() error {
	return probeRun(ebpf.XDP, ErrNoXDPContext, &ebpf.RunOptions{
		Data:    make([]byte, 14),
		Context: XDPContext{DataEnd: 2},
	})
})
