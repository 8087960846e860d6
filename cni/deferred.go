package cni

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/podpath/podpath/loader"
	"github.com/vishvananda/netlink"
)

// On a tcx node, every tcx attach waits for an RCU grace period while it
// holds the kernel's rtnl lock: about 10 ms each on a small machine, and
// ADD attaches two. With "deferTCX" in the configuration ADD attaches
// from_pod and to_pod with cls_bpf instead (a fraction of a millisecond)
// and records the pod's host veth here; the node's agent moves those
// attachments to tcx links once ADDs have been quiet for a while
// (MoveToTCX), so the grace periods are spent off pods' start-up path.
// A tcx link runs before the clsact qdisc, and from_pod's and to_pod's
// verdicts end the hook, so while both are attached the packet meets the
// programs once.

// deferredDir holds one file per host veth waiting for its tcx links,
// naming the veth's network.
func deferredDir(stateDir string) string { return filepath.Join(stateDir, "tcx-deferred") }

func recordDeferred(stateDir, network, hostVeth string) error {
	if err := os.MkdirAll(deferredDir(stateDir), 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(deferredDir(stateDir), hostVeth), []byte(network+"\n"), 0o600)
}

func forgetDeferred(stateDir, hostVeth string) error {
	err := os.Remove(filepath.Join(deferredDir(stateDir), hostVeth))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Deferred lists the host veths whose programs wait for tcx links.
func Deferred(stateDir string) ([]string, error) {
	ents, err := os.ReadDir(deferredDir(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// newestDeferred is when the latest host veth was recorded.
func newestDeferred(stateDir string) (time.Time, error) {
	ents, err := os.ReadDir(deferredDir(stateDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return time.Time{}, err
	}
	var newest time.Time
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.ModTime().After(newest) {
			newest = fi.ModTime()
		}
	}
	return newest, nil
}

// MoveToTCX gives every recorded host veth tcx links for from_pod and
// to_pod and then removes their cls_bpf filters, once no veth has been
// recorded for quiet (an ADD in progress would otherwise wait on the
// kernel's rtnl lock behind the moves); it stops early when a new one is
// recorded meanwhile. A veth that is gone is forgotten; one an ADD or DEL
// holds is left for the next call. It returns how many it moved.
func MoveToTCX(pinRoot, stateDir string, quiet time.Duration) (int, error) {
	newest, err := newestDeferred(stateDir)
	if err != nil || newest.IsZero() || time.Since(newest) < quiet {
		return 0, err
	}
	veths, err := Deferred(stateDir)
	if err != nil {
		return 0, err
	}
	var errs []error
	moved := 0
	for _, veth := range veths {
		if n, err := newestDeferred(stateDir); err == nil && n.After(newest) {
			break // ADDs again: the rest waits for the next quiet spell
		}
		b, err := os.ReadFile(filepath.Join(deferredDir(stateDir), veth))
		if errors.Is(err, os.ErrNotExist) {
			continue // DEL took it meanwhile
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		network := strings.TrimSpace(string(b))
		ok, err := moveOne(pinRoot, stateDir, network, veth)
		if err != nil {
			errs = append(errs, fmt.Errorf("move %s to tcx: %w", veth, err))
			continue
		}
		if ok {
			moved++
		}
	}
	return moved, errors.Join(errs...)
}

// moveOne moves one host veth's programs to tcx links, holding the
// attachment's lock; false when an ADD or DEL holds it or the veth is gone.
func moveOne(pinRoot, stateDir, network, veth string) (bool, error) {
	lock, err := lockAttachment(stateDir, network, veth, false)
	if errors.Is(err, errAttachmentBusy) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer lock.Close()
	// Read again under the lock: a DEL may have finished meanwhile.
	if _, err := os.Stat(filepath.Join(deferredDir(stateDir), veth)); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	l, err := netlink.LinkByName(veth)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false, forgetDeferred(stateDir, veth)
	}
	if err != nil {
		return false, err
	}
	for _, p := range podPrograms {
		prog, err := loader.LoadPinnedProgram(pinRoot, p.name)
		if err != nil {
			return false, err
		}
		_, err = loader.AttachTC(pinRoot, loader.ModeTCX, p.name, prog, l.Attrs().Index, p.dir)
		prog.Close()
		if err != nil {
			return false, err
		}
		if err := loader.DetachLegacyTC(pinRoot, p.name, veth, p.dir); err != nil {
			return false, err
		}
	}
	slog.Debug("moved to tcx", "veth", veth)
	return true, forgetDeferred(stateDir, veth)
}

// deferTCX tells whether ADD attaches with cls_bpf and leaves the tcx
// links to MoveToTCX: asked for, and the node attaches by tcx.
func deferTCX(conf *Config) (bool, error) {
	if !conf.DeferTCX {
		return false, nil
	}
	mode := conf.TCAttach
	if mode == "" || mode == "auto" {
		f, err := loader.Probe()
		if err != nil {
			return false, err
		}
		mode = f.TCMechanism()
	}
	return mode == loader.ModeTCX, nil
}
