package datapath_test

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// sendOverVeth sends frames from the pod side of a real veth pair, with
// from_pod attached at ingress of the host side (tcx or legacy tc, as the
// loader picks for this kernel), and waits until the
// counters have seen them all. It is for the packets BPF_PROG_RUN refuses to
// build: recent kernels (this one included) reject skb input whose
// ethertype is IPv4 but whose IPv4 header is shorter than 20 bytes, while a
// pod can put exactly such a frame on its veth.
//
// Everything happens in a private network namespace on a thread that is
// thrown away afterwards, so the host's devices are never touched.
func (d *datapath) sendOverVeth(frames [][]byte, wantPackets uint64) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with this goroutine, and the
		// namespace and its veths with it.
		runtime.LockOSThread()
		errc <- d.sendInNewNetns(frames, wantPackets)
	}()
	return <-errc
}

func (d *datapath) sendInNewNetns(frames [][]byte, wantPackets uint64) error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("new network namespace: %w", err)
	}
	// No IPv6 autoconfiguration: its router and neighbour solicitations
	// would reach from_pod too and be counted.
	for _, conf := range []string{"all", "default"} {
		os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/disable_ipv6", []byte("1"), 0)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "host0"}, PeerName: "pod0"}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth: %w", err)
	}
	host, err := netlink.LinkByName("host0")
	if err != nil {
		return err
	}
	peer, err := netlink.LinkByName("pod0")
	if err != nil {
		return err
	}
	for _, l := range []netlink.Link{host, peer} {
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
		}
	}
	root, err := os.MkdirTemp(loader.BPFFSMount, "podpath-veth-test-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	if _, err := loader.AttachTC(root, "", maps.ProgFromPod, d.fromPod, host.Attrs().Index, loader.Ingress); err != nil {
		return fmt.Errorf("attach from_pod: %w", err)
	}
	defer loader.DetachTC(root, maps.ProgFromPod, "host0", loader.Ingress)

	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Ifindex: peer.Attrs().Index, Halen: 6}
	for _, f := range frames {
		if err := unix.Sendto(fd, f, 0, to); err != nil {
			return fmt.Errorf("send %d-byte frame: %w", len(f), err)
		}
	}

	// The frames cross the veth in softirq context, usually before Sendto
	// returns; allow a little time all the same.
	deadline := time.Now().Add(2 * time.Second)
	for {
		var seen uint64
		cs, err := d.readCounters()
		if err != nil {
			return err
		}
		for _, c := range cs {
			seen += c.Packets
		}
		if seen >= wantPackets {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("frames sent over the veth were not all counted within 2s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
