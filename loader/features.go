package loader

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Features are what the running kernel offers the datapath, found by probing
// (never by parsing version numbers).
type Features struct {
	Kernel        string `json:"kernel"`
	TCX           bool   `json:"tcx"`
	RedirectPeer  bool   `json:"redirectPeer"`
	RedirectNeigh bool   `json:"redirectNeigh"`
	LRUHash       bool   `json:"lruHash"`
	RingBuf       bool   `json:"ringBuf"`
	// NetnsCookie: sockets report their network namespace's cookie
	// (SO_NETNS_COOKIE, Linux 5.14). The socket load balancer needs it to
	// tell the node's sockets from pods'.
	NetnsCookie bool `json:"netnsCookie"`
}

// TCMechanism names how tc programs are attached on this kernel.
func (f Features) TCMechanism() string {
	if f.TCX {
		return ModeTCX
	}
	return ModeLegacyTC
}

var (
	probeOnce sync.Once
	probed    Features
	probeErr  error
)

// Probe finds the kernel's features once per process.
func Probe() (Features, error) {
	probeOnce.Do(func() { probed, probeErr = probe() })
	return probed, probeErr
}

func probe() (Features, error) {
	var f Features
	// Probing creates programs and maps, charged against RLIMIT_MEMLOCK
	// before 5.11.
	if err := rlimit.RemoveMemlock(); err != nil {
		return f, fmt.Errorf("lift RLIMIT_MEMLOCK: %w", err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		f.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	if err := features.HaveProgramType(ebpf.SchedCLS); err != nil {
		return f, fmt.Errorf("kernel cannot run tc BPF programs: %w", err)
	}
	f.RedirectPeer = features.HaveProgramHelper(ebpf.SchedCLS, asm.FnRedirectPeer) == nil
	f.RedirectNeigh = features.HaveProgramHelper(ebpf.SchedCLS, asm.FnRedirectNeigh) == nil
	f.LRUHash = features.HaveMapType(ebpf.LRUHash) == nil
	f.RingBuf = features.HaveMapType(ebpf.RingBuf) == nil
	if _, err := NetnsCookie(); err == nil {
		f.NetnsCookie = true
	} else if !errors.Is(err, ErrNoNetnsCookie) {
		return f, err
	}
	tcx, err := probeTCX()
	if err != nil {
		return f, err
	}
	f.TCX = tcx
	return f, nil
}

// probeTCX asks the kernel for a tcx link on interface 0: a kernel with tcx
// answers "no such device", one without it "not supported".
func probeTCX() (bool, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if err != nil {
		return false, fmt.Errorf("probe tcx: load probe program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Program: prog, Attach: ebpf.AttachTCXIngress, Interface: 0})
	if err == nil {
		l.Close()
		return true, nil
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return false, nil
	}
	return true, nil
}
