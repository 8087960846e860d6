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
	"github.com/podpath/podpath/maps"
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
	// OverlayEncap: bpf_skb_adjust_room makes room for an Ethernet frame
	// in VXLAN (BPF_F_ADJ_ROOM_ENCAP_L2_ETH, Linux 5.11), so from_pod
	// puts the overlay's outer headers on itself; without it the VXLAN
	// device does.
	OverlayEncap bool `json:"overlayEncap"`
	// FIBSkipNeigh: bpf_fib_lookup stops at the route when asked
	// (BPF_FIB_LOOKUP_SKIP_NEIGH, Linux 6.3; Debian's 6.1 has it too), sparing the neighbour search
	// whose answer podpath does not use (bpf/lib/fib.h).
	FIBSkipNeigh bool `json:"fibSkipNeigh"`
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
	if f.OverlayEncap, err = probeOverlayEncap(); err != nil {
		return f, err
	}
	if f.FIBSkipNeigh, err = probeFIBSkipNeigh(); err != nil {
		return f, err
	}
	return f, nil
}

// probeFIBSkipNeigh runs bpf_fib_lookup with BPF_FIB_LOOKUP_SKIP_NEIGH for
// 127.0.0.1 on the loopback device: a kernel without the flag answers
// -EINVAL before looking at anything else; one with it answers with a
// lookup result (>= 0).
func probeFIBSkipNeigh() (bool, error) {
	const (
		paramsSize = 64 // struct bpf_fib_lookup
		params     = -paramsSize
	)
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	for off := int16(params); off < 0; off += 4 {
		insns = append(insns, asm.StoreImm(asm.RFP, off, 0, asm.Word))
	}
	insns = append(insns,
		asm.StoreImm(asm.RFP, params, unix.AF_INET, asm.Byte),  // family
		asm.StoreImm(asm.RFP, params+8, 1, asm.Word),           // ifindex: lo
		asm.StoreImm(asm.RFP, params+32, 0x0100007f, asm.Word), // ipv4_dst 127.0.0.1, network order on little-endian
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, params),
		asm.Mov.Imm(asm.R3, paramsSize),
		asm.Mov.Imm(asm.R4, maps.FIBLookupSkipNeigh),
		asm.FnFibLookup.Call(),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: insns})
	if err != nil {
		return false, fmt.Errorf("probe FIB lookup flags: load probe program: %w", err)
	}
	defer prog.Close()
	frame := make([]byte, 14+20)
	frame[12], frame[13], frame[14] = 0x08, 0x00, 0x45
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		return false, fmt.Errorf("probe FIB lookup flags: run probe program: %w", err)
	}
	return int32(ret) != -int32(unix.EINVAL), nil
}

// Flags of bpf_skb_adjust_room (linux/bpf.h) as bpf/lib/peer.h makes room
// for the overlay's headers.
const (
	adjRoomMAC           = 1
	adjRoomEncapL3IPv4   = 1 << 1
	adjRoomEncapL4UDP    = 1 << 4
	adjRoomEncapL2Eth    = 1 << 6
	adjRoomEncapL2Shift  = 56
	overlayEncapRoom     = 50 // outer IPv4, UDP, VXLAN and the inner Ethernet header
	overlayEncapL2Length = 14
)

// probeOverlayEncap runs bpf_skb_adjust_room with the overlay's flags on a
// small UDP packet: a kernel without one of them refuses them all.
func probeOverlayEncap() (bool, error) {
	flags := uint64(adjRoomEncapL3IPv4 | adjRoomEncapL4UDP | adjRoomEncapL2Eth |
		overlayEncapL2Length<<adjRoomEncapL2Shift)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R2, overlayEncapRoom),
			asm.Mov.Imm(asm.R3, adjRoomMAC),
			asm.LoadImm(asm.R4, int64(flags), asm.DWord),
			asm.FnSkbAdjustRoom.Call(),
			asm.Return(),
		},
	})
	if err != nil {
		return false, fmt.Errorf("probe overlay encapsulation: load probe program: %w", err)
	}
	defer prog.Close()
	// Ethernet, IPv4 (20 bytes, UDP) and UDP headers with 18 bytes of data.
	frame := make([]byte, 14+20+8+18)
	frame[12], frame[13] = 0x08, 0x00
	frame[14], frame[14+3], frame[14+8], frame[14+9] = 0x45, 20+8+18, 64, unix.IPPROTO_UDP
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		return false, fmt.Errorf("probe overlay encapsulation: run probe program: %w", err)
	}
	return ret == 0, nil
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
