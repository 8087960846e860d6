package loader

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// attachToPod attaches to_pod at tc egress of every pod's host-side veth
// (the endpoints map names each by ifindex) that lacks it: pods connected
// by a build without to_pod get it on the upgrade's node init. Veths that
// have it were pointed at the new program by replaceAttached already. An
// entry whose device is gone, or is no veth (its ifindex taken by another
// device since), is left to the CNI plugin's GC.
func attachToPod(c Config, prog *ebpf.Program) error {
	eps, err := maps.OpenEndpoints(c.PinRoot)
	if err != nil {
		return err
	}
	defer eps.Close()
	all, err := eps.List()
	if err != nil {
		return err
	}
	atts, err := Attachments(c.PinRoot)
	if err != nil {
		return err
	}
	done := map[int]bool{}
	for _, a := range atts {
		if a.Program == maps.ProgToPod && a.Direction == Egress && a.Ifindex != 0 {
			done[a.Ifindex] = true
		}
	}
	for _, ep := range all {
		idx := int(ep.Info.Ifindex)
		if done[idx] {
			continue
		}
		done[idx] = true
		dev, err := netlink.LinkByIndex(idx)
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			slog.Warn("endpoint's device is gone: to_pod not attached", "ip", ep.IP, "ifindex", idx)
			continue
		}
		if err != nil {
			return fmt.Errorf("endpoint %s: device %d: %w", ep.IP, idx, err)
		}
		if dev.Type() != "veth" {
			slog.Warn("endpoint's device is no veth: to_pod not attached", "ip", ep.IP, "ifindex", idx, "device", dev.Attrs().Name)
			continue
		}
		if _, err := AttachTC(c.PinRoot, c.TCAttach, maps.ProgToPod, prog, idx, Egress); err != nil {
			return fmt.Errorf("endpoint %s: %w", ep.IP, err)
		}
		slog.Info("attached to_pod to an existing pod", "ip", ep.IP, "veth", dev.Attrs().Name)
	}
	return nil
}
