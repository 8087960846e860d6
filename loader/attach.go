package loader

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// How a program is attached.
const (
	ModeTCX        = "tcx"               // bpf_link on the tcx hook (6.6+)
	ModeLegacyTC   = "tc"                // clsact qdisc + cls_bpf filter
	ModeXDPNative  = "xdp-" + XDPNative  // XDP in the driver
	ModeXDPGeneric = "xdp-" + XDPGeneric // XDP emulated on the skb
)

// XDP modes of a node's uplinks (Config.XDPMode).
const (
	// XDPAuto is native XDP where it pays: on uplinks whose driver runs
	// XDP natively, except veths (a veth that runs XDP makes its peer stop
	// sending GSO packets, so every packet to the node arrives cut to the
	// MTU); elsewhere no XDP, from_netdev doing the work.
	XDPAuto    = "auto"
	XDPNative  = "native"  // in the driver, before any skb exists: the fast path
	XDPGeneric = "generic" // emulated on the skb, for drivers without XDP
	XDPOff     = "off"     // no XDP program: from_netdev does its work
)

// Direction of a tc attachment.
type Direction string

const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// legacyFilterName names a cls_bpf filter podpath owns, so it can be found
// again for replacement and detach: "podpath:<prog>@<root hash>". The pin
// root's hash keeps two nodes sharing a network namespace (simulated nodes,
// tests) from taking over each other's filters.
func legacyFilterName(root, progName string) string {
	h := fnv.New32a()
	h.Write([]byte(filepath.Clean(root)))
	return fmt.Sprintf("podpath:%s@%08x", progName, h.Sum32())
}

// legacyFilterProgram returns the program a filter name of this root stands
// for.
func legacyFilterProgram(root, name string) (string, bool) {
	prog, _, ok := strings.Cut(strings.TrimPrefix(name, "podpath:"), "@")
	if !ok || !strings.HasPrefix(name, "podpath:") || legacyFilterName(root, prog) != name {
		return "", false
	}
	return prog, true
}

// dropLink detaches a link from its hook, removes its pin and closes it.
// Detaching explicitly (BPF_LINK_DETACH) matters: the kernel otherwise
// detaches when the last reference goes, and before 6.x dropping a bpffs
// pin puts that reference from an RCU callback, through a workqueue, some
// time later; until then the hook stays taken and a new attach there fails
// with EBUSY. A link whose hook is already gone has nothing to detach.
func dropLink(l link.Link) error {
	err := l.Detach()
	if errors.Is(err, link.ErrNotSupported) || errors.Is(err, unix.ENOLINK) || errors.Is(err, unix.EINVAL) {
		err = nil
	}
	if uerr := l.Unpin(); uerr != nil && err == nil {
		err = uerr
	}
	l.Close()
	return err
}

// reusePinnedLink points the link pinned at pin at prog, in place, when
// onHook says it is still on the hook wanted, and reports whether it did.
// A link pinned there on another hook (the device or cgroup of that name
// was removed and made again) is dropped, and so is one that cannot say
// where it is.
func reusePinnedLink(pin string, prog *ebpf.Program, onHook func(*link.Info) bool) (bool, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return false, nil
	}
	if info, err := l.Info(); err == nil && onHook(info) {
		defer l.Close()
		return true, l.Update(prog)
	}
	dropLink(l)
	return false, nil
}

// updatePinnedLink points the link pinned at pin at prog.
func updatePinnedLink(pin string, prog *ebpf.Program) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return err
	}
	defer l.Close()
	return l.Update(prog)
}

// Attachment is one program attached to one device.
type Attachment struct {
	Program   string    `json:"program"`
	Ifname    string    `json:"ifname"`
	Ifindex   int       `json:"ifindex"`
	Direction Direction `json:"direction,omitempty"`
	Mode      string    `json:"mode"`
	ProgramID uint32    `json:"programID"`
	pin       string
}

// linkPin is where a bpf_link of prog on a device is pinned:
// "<prog>@<hook>@<ifname>", hook being ingress, egress or xdp. bpffs refuses
// dots in names and device names may hold them, but never a colon.
func linkPin(root, prog, ifname string, dir Direction) string {
	hook := string(dir)
	if hook == "" {
		hook = "xdp"
	}
	name := prog + "@" + hook + "@" + strings.ReplaceAll(ifname, ".", ":")
	return filepath.Join(maps.LinkDir(root), name)
}

// AttachTC attaches prog (pinned under root as progName) at the tc hook of
// the device with the node's mechanism (Config.TCAttach: ModeTCX or
// ModeLegacyTC; empty means tcx where the kernel has it). Attaching again
// replaces the program: ADD may be retried.
func AttachTC(root, mode, progName string, prog *ebpf.Program, ifindex int, dir Direction) (string, error) {
	dev, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return "", fmt.Errorf("attach %s: device %d: %w", progName, ifindex, err)
	}
	ifname := dev.Attrs().Name
	if mode == "" || mode == "auto" {
		f, err := Probe()
		if err != nil {
			return "", err
		}
		mode = f.TCMechanism()
	}
	switch mode {
	case ModeTCX:
		return mode, attachTCX(root, progName, prog, ifindex, ifname, dir)
	case ModeLegacyTC:
		return mode, attachLegacyTC(root, progName, prog, ifindex, dir)
	default:
		return "", fmt.Errorf("attach %s to %s: unknown tc attach mode %q", progName, ifname, mode)
	}
}

func attachTCX(root, progName string, prog *ebpf.Program, ifindex int, ifname string, dir Direction) error {
	pin := linkPin(root, progName, ifname, dir)
	reused, err := reusePinnedLink(pin, prog, func(info *link.Info) bool {
		return info.TCX() != nil && int(info.TCX().Ifindex) == ifindex
	})
	if err != nil {
		return fmt.Errorf("attach %s to %s: update link: %w", progName, ifname, err)
	}
	if reused {
		return nil
	}
	attach := ebpf.AttachTCXIngress
	if dir == Egress {
		attach = ebpf.AttachTCXEgress
	}
	l, err := link.AttachTCX(link.TCXOptions{Program: prog, Attach: attach, Interface: ifindex})
	if err != nil {
		return fmt.Errorf("attach %s to %s (tcx %s): %w", progName, ifname, dir, err)
	}
	defer l.Close()
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return err
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin link %s: %w", pin, err)
	}
	return nil
}

// filtersAt lists the tc filters at one of a device's hooks.
func filtersAt(dev netlink.Link, dir Direction) ([]netlink.Filter, error) {
	return Consistent(func() ([]netlink.Filter, error) { return netlink.FilterList(dev, tcParent(dir)) })
}

func tcParent(dir Direction) uint32 {
	if dir == Egress {
		return netlink.HANDLE_MIN_EGRESS
	}
	return netlink.HANDLE_MIN_INGRESS
}

func legacyFilter(root, progName string, fd, ifindex int, dir Direction) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    tcParent(dir),
			Handle:    1,
			Protocol:  unix.ETH_P_ALL,
			Priority:  1,
		},
		Fd:           fd,
		Name:         legacyFilterName(root, progName),
		DirectAction: true,
	}
}

func attachLegacyTC(root, progName string, prog *ebpf.Program, ifindex int, dir Direction) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("attach %s: add clsact qdisc on %d: %w", progName, ifindex, err)
	}
	if err := netlink.FilterReplace(legacyFilter(root, progName, prog.FD(), ifindex, dir)); err != nil {
		return fmt.Errorf("attach %s: cls_bpf filter on %d %s: %w", progName, ifindex, dir, err)
	}
	return nil
}

// DetachTC removes progName from the device's tc hook, whichever way it was
// attached. A device or attachment that is already gone is not an error.
func DetachTC(root, progName, ifname string, dir Direction) error {
	pin := linkPin(root, progName, ifname, dir)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		dropLink(l)
	} else if !errors.Is(err, os.ErrNotExist) {
		os.Remove(pin)
	}
	return DetachLegacyTC(root, progName, ifname, dir)
}

// DetachLegacyTC removes progName's cls_bpf filter from the device's tc
// hook and leaves a tcx link there alone. A device or filter that is
// already gone is not an error.
func DetachLegacyTC(root, progName, ifname string, dir Direction) error {
	dev, err := netlink.LinkByName(ifname)
	if err != nil {
		return nil
	}
	filters, err := filtersAt(dev, dir)
	if err != nil {
		return nil
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == legacyFilterName(root, progName) {
			// ENODEV: the device went while this ran (its pod's netns
			// deleted), and its filters with it.
			if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("detach %s from %s: %w", progName, ifname, err)
			}
		}
	}
	return nil
}

// AttachXDP attaches prog to the device's XDP hook in mode (XDPNative or
// XDPGeneric) and pins the link. Attaching again in the same mode replaces
// the program in place; in the other mode the old link goes first, a device
// running one program per mode. A device without native XDP is refused,
// never quietly run generic.
func AttachXDP(root, mode, progName string, prog *ebpf.Program, ifindex int) error {
	dev, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("attach %s: device %d: %w", progName, ifindex, err)
	}
	ifname := dev.Attrs().Name
	flags, ok := map[string]link.XDPAttachFlags{XDPNative: link.XDPDriverMode, XDPGeneric: link.XDPGenericMode}[mode]
	if !ok {
		return fmt.Errorf("attach %s to %s: unknown XDP mode %q", progName, ifname, mode)
	}
	pin := linkPin(root, progName, ifname, "")
	reused, err := reusePinnedLink(pin, prog, func(info *link.Info) bool {
		return info.XDP() != nil && int(info.XDP().Ifindex) == ifindex && xdpModeOf(ifindex) == mode
	})
	if err != nil {
		return fmt.Errorf("attach %s to %s: update link: %w", progName, ifname, err)
	}
	if reused {
		return nil
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flags})
	if mode == XDPNative && errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("attach %s to %s: %s (%s) has no native XDP: use --xdp-mode generic, or off (%w)",
			progName, ifname, ifname, dev.Type(), err)
	}
	if mode == XDPNative && errors.Is(err, unix.ERANGE) {
		return fmt.Errorf("attach %s to %s: the driver's native XDP does not take an MTU of %d (a veth, for one, takes about 3,500 bytes at most): use --xdp-mode generic, or off (%w)",
			progName, ifname, dev.Attrs().MTU, err)
	}
	if err != nil {
		return fmt.Errorf("attach %s to %s (XDP %s): %w", progName, ifname, mode, err)
	}
	defer l.Close()
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return err
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin link %s: %w", pin, err)
	}
	return nil
}

// xdpModeOf is the mode the device's XDP program runs in, as the kernel
// reports it: XDPNative, XDPGeneric, or "" for none (or another).
func xdpModeOf(ifindex int) string {
	dev, err := netlink.LinkByIndex(ifindex)
	if err != nil || dev.Attrs().Xdp == nil {
		return ""
	}
	switch dev.Attrs().Xdp.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return XDPNative
	case nl.XDP_ATTACHED_SKB:
		return XDPGeneric
	}
	return ""
}

// DetachXDP removes progName from the device's XDP hook.
func DetachXDP(root, progName, ifname string) error {
	pin := linkPin(root, progName, ifname, "")
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("detach %s from %s: %w", progName, ifname, err)
	}
	if err := dropLink(l); err != nil {
		return fmt.Errorf("detach %s from %s: %w", progName, ifname, err)
	}
	return nil
}

// parseLinkPin reverses linkPin.
func parseLinkPin(name string) (prog, ifname string, dir Direction, ok bool) {
	parts := strings.SplitN(name, "@", 3)
	if len(parts) != 3 {
		return "", "", "", false
	}
	if parts[1] != "xdp" {
		dir = Direction(parts[1])
	}
	return parts[0], strings.ReplaceAll(parts[2], ":", "."), dir, true
}

// Attachments lists every program podpath has attached in this network
// namespace: pinned links under root, and legacy cls_bpf filters found by name.
func Attachments(root string) ([]Attachment, error) {
	var out []Attachment
	entries, err := os.ReadDir(maps.LinkDir(root))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range entries {
		if _, _, ok := parseCgroupLinkPin(e.Name()); ok {
			continue // CgroupAttachments lists those
		}
		prog, ifname, dir, ok := parseLinkPin(e.Name())
		if !ok {
			continue
		}
		a := Attachment{Program: prog, Ifname: ifname, Direction: dir, pin: filepath.Join(maps.LinkDir(root), e.Name())}
		l, err := link.LoadPinnedLink(a.pin, nil)
		if err != nil {
			a.Mode = "broken: " + err.Error()
			out = append(out, a)
			continue
		}
		if info, err := l.Info(); err == nil {
			a.ProgramID = uint32(info.Program)
			switch {
			case info.TCX() != nil:
				a.Mode, a.Ifindex = ModeTCX, int(info.TCX().Ifindex)
			case info.XDP() != nil:
				a.Mode, a.Ifindex = ModeXDPNative, int(info.XDP().Ifindex)
				if xdpModeOf(a.Ifindex) == XDPGeneric {
					a.Mode = ModeXDPGeneric
				}
			}
		}
		l.Close()
		if a.Ifindex == 0 {
			a.Mode = "defunct (device gone)"
		}
		out = append(out, a)
	}
	devs, err := Consistent(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	for _, dev := range devs {
		for _, dir := range []Direction{Ingress, Egress} {
			filters, err := filtersAt(dev, dir)
			if err != nil {
				continue
			}
			for _, f := range filters {
				bf, ok := f.(*netlink.BpfFilter)
				if !ok {
					continue
				}
				prog, ok := legacyFilterProgram(root, bf.Name)
				if !ok {
					continue
				}
				out = append(out, Attachment{
					Program:   prog,
					Ifname:    dev.Attrs().Name,
					Ifindex:   dev.Attrs().Index,
					Direction: dir,
					Mode:      ModeLegacyTC,
					ProgramID: uint32(bf.Id),
				})
			}
		}
	}
	return out, nil
}

// replaceAttached points every attachment of a program at its new version,
// without a moment in which the hook is empty.
func replaceAttached(root string, progs map[string]*ebpf.Program) error {
	atts, err := Attachments(root)
	if err != nil {
		return err
	}
	for _, a := range atts {
		prog, ok := progs[a.Program]
		if !ok {
			continue
		}
		switch a.Mode {
		case ModeLegacyTC:
			if err := netlink.FilterReplace(legacyFilter(root, a.Program, prog.FD(), a.Ifindex, a.Direction)); err != nil {
				return fmt.Errorf("replace %s on %s: %w", a.Program, a.Ifname, err)
			}
		case ModeTCX, ModeXDPNative, ModeXDPGeneric:
			if err := updatePinnedLink(a.pin, prog); err != nil {
				return fmt.Errorf("replace %s on %s: %w", a.Program, a.Ifname, err)
			}
		default:
			// The device is gone: the pin is all that is left of it.
			os.Remove(a.pin)
		}
	}
	return nil
}
