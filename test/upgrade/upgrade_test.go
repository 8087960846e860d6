// Package upgrade_test proves that reloading the datapath (what `podpath node
// init` does on an upgrade or agent restart) never interrupts pod traffic.
package upgrade_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
)

// pingPong keeps one UDP request in flight from a to b until stop is closed
// and counts requests that got no answer within the timeout.
func pingPong(t *testing.T, a, b *sim.Pod, stop <-chan struct{}) (sent, lost *atomic.Int64, done <-chan struct{}) {
	t.Helper()
	var srv, cli net.PacketConn
	if err := b.Do(func() (err error) {
		srv, err = net.ListenPacket("udp4", net.JoinHostPort(b.IP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.Do(func() (err error) {
		cli, err = net.ListenPacket("udp4", net.JoinHostPort(a.IP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 64)
		for {
			n, addr, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], addr)
		}
	}()
	sent, lost = new(atomic.Int64), new(atomic.Int64)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer srv.Close()
		defer cli.Close()
		buf := make([]byte, 64)
		for seq := 0; ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			msg := []byte(fmt.Sprintf("seq %d", seq))
			sent.Add(1)
			cli.SetDeadline(time.Now().Add(time.Second))
			if _, err := cli.WriteTo(msg, srv.LocalAddr()); err != nil {
				lost.Add(1)
				continue
			}
			// An answer to an earlier request that came after that
			// request's deadline (counted lost then) is not this one's:
			// read on until this one's comes or its own deadline passes,
			// so one slow answer is one loss and not every one after it.
			for {
				n, _, err := cli.ReadFrom(buf)
				if err != nil {
					lost.Add(1)
					break
				}
				if string(buf[:n]) == string(msg) {
					break
				}
			}
		}
	}()
	return sent, lost, finished
}

func testReloadKeepsTraffic(t *testing.T, wantMode string) {
	node, err := sim.NewNode("upgrade", netip.MustParsePrefix("10.200.0.0/24"), sim.WithTCAttach(wantMode))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	ctx := context.Background()
	a, err := node.AddPod(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := node.AddPod(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	sent, lost, done := pingPong(t, a, b, stop)
	// What `podpath node init` does on an upgrade: same node, new programs.
	cfg := loader.Config{PinRoot: node.PinRoot, StateDir: node.StateDir, PodCIDR: node.PodCIDR, MTU: node.MTU}
	const reloads = 20
	var ids []uint32
	for i := 0; i < reloads; i++ {
		time.Sleep(20 * time.Millisecond)
		if err := node.Do(func() error { return loader.Init(cfg) }); err != nil {
			close(stop)
			t.Fatalf("reload %d: %v", i, err)
		}
		var atts []loader.Attachment
		if err := node.Do(func() (err error) { atts, err = loader.Attachments(node.PinRoot); return err }); err != nil {
			t.Fatal(err)
		}
		if len(atts) != 4 {
			t.Fatalf("reload %d: %d attachments, want from_pod and to_pod per pod: %+v", i, len(atts), atts)
		}
		var fromPod uint32
		for _, at := range atts {
			if at.Mode != wantMode {
				t.Fatalf("reload %d: %s attached with %s, want %s", i, at.Ifname, at.Mode, wantMode)
			}
			if at.Program == maps.ProgFromPod {
				fromPod = at.ProgramID
			}
		}
		ids = append(ids, fromPod)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	<-done

	if ids[0] == ids[len(ids)-1] {
		t.Fatalf("the attached program never changed (id %d): nothing was reloaded", ids[0])
	}
	t.Logf("%d requests across %d reloads, %d lost", sent.Load(), reloads, lost.Load())
	if sent.Load() < 100 {
		t.Fatalf("only %d requests sent: the test did not exercise the datapath", sent.Load())
	}
	if lost.Load() != 0 {
		t.Fatalf("%d of %d requests lost while the datapath was reloaded", lost.Load(), sent.Load())
	}
	// The packets went through from_pod, not around it.
	fwd, err := node.Packets(maps.HookFromPod, maps.ReasonForwardLocal)
	if err != nil {
		t.Fatal(err)
	}
	if fwd < uint64(2*sent.Load()) {
		t.Fatalf("forward_local counted %d packets for %d round trips: counters lost across reloads", fwd, sent.Load())
	}
}

func TestReloadKeepsTrafficTCX(t *testing.T) {
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	if !f.TCX {
		t.Skipf("kernel %s has no tcx; TestReloadKeepsTrafficLegacyTC covers the mechanism in use", f.Kernel)
	}
	testReloadKeepsTraffic(t, loader.ModeTCX)
}

func TestReloadKeepsTrafficLegacyTC(t *testing.T) {
	testReloadKeepsTraffic(t, loader.ModeLegacyTC)
}
