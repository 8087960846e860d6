package datapath_test

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// A SYN without ACK on the tuple of a flow conntrack knows is a new
// connection when the flow was closed (FIN or RST seen), as when a client
// reuses its local port, or when the flow's backend is terminating: it gets
// a backend from the slots as they are now. Anything else on a known tuple,
// a retransmitted SYN of a live flow included, stays with its backend.
func TestServiceReusedTuple(t *testing.T) {
	tests := []struct {
		name string
		// between runs after the flow's first SYN went to B and before
		// the service moves to C.
		between func(t *testing.T, d *svcDatapath, syn flow)
		next    uint8 // flags of the packet sent on the tuple afterwards
		want    backend
	}{
		{name: "closed by FIN, a new SYN: picked anew", next: tcpSYN, want: beC,
			between: func(t *testing.T, d *svcDatapath, syn flow) { d.closeFlow(t, syn, tcpFIN|tcpACK) }},
		{name: "reset by RST, a new SYN: picked anew", next: tcpSYN, want: beC,
			between: func(t *testing.T, d *svcDatapath, syn flow) { d.closeFlow(t, syn, tcpRST) }},
		{name: "backend terminating, a new SYN: picked anew", next: tcpSYN, want: beC,
			between: func(t *testing.T, d *svcDatapath, _ flow) {
				b := beB
				b.Flags = maps.BackendFlagTerminating
				d.putBackend(t, b)
			}},
		{name: "live flow, SYN retransmitted: kept", next: tcpSYN, want: beB,
			between: func(*testing.T, *svcDatapath, flow) {}},
		{name: "closed by FIN, a late ACK: kept", next: tcpACK, want: beB,
			between: func(t *testing.T, d *svcDatapath, syn flow) { d.closeFlow(t, syn, tcpFIN|tcpACK) }},
		{name: "backend terminating, a SYN-ACK-less ACK: kept", next: tcpACK, want: beB,
			between: func(t *testing.T, d *svcDatapath, _ flow) {
				b := beB
				b.Flags = maps.BackendFlagTerminating
				d.putBackend(t, b)
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := clusterIP(protoTCP, backendB)
			d := newServiceDatapath(t, svc)
			syn := tcpFlow(podA.IP, 40400, vip, vipPort, tcpSYN)
			fwd := ctKeyOf(syn)
			expectForwarded(t, d.send(t, podA, syn.sentBy(podA)), syn.to(podB.IP, backendPort).routedInto(podB))
			tc.between(t, d, syn)
			before, _ := d.ctEntry(t, fwd)
			svc.Slots = []uint32{backendC}
			d.putService(t, svc)

			next := syn
			next.TCPFlags, next.ID = tc.next, syn.ID+7
			in := next.sentBy(podA)
			r := d.send(t, podA, in)

			p, _ := podAt(tc.want.Addr)
			expectForwarded(t, r, next.to(tc.want.Addr, backendPort).routedInto(p))
			if tc.want == beB {
				e, _ := d.ctEntry(t, fwd)
				if e.BackendId != backendB || e.Packets != before.Packets+1 {
					t.Errorf("forward entry: backend %d after %d packets, want backend %d after %d",
						e.BackendId, e.Packets, backendB, before.Packets+1)
				}
				return
			}
			// A new connection: entries made afresh by this SYN.
			d.expectCt(t, "forward entry", fwd, r, lifetimeTCPSyn, maps.CtEntry{
				Packets: 1, Bytes: uint64(len(in)), SvcId: tcpSvcID, BackendId: backendC, TcpFlags: tcpSYN,
			})
			rev := ctKey(protoTCP, podC.IP, backendPort, podA.IP, syn.Sport)
			d.expectCt(t, "reply entry", rev, r, lifetimeTCPSyn, maps.CtEntry{
				SvcId: tcpSvcID, BackendId: backendC,
				NatAddr: maps.Addr16(vip), NatPort: maps.Port(vipPort), Flags: maps.CtFlagReply,
			})
			synack := next.to(podC.IP, backendPort).answer(tcpSYN | tcpACK)
			expectForwarded(t, d.send(t, podC, synack.sentBy(podC)), synack.from(vip, vipPort).routedInto(podA))
		})
	}
}

// closeFlow sends the client's closing segment of syn's flow through from_pod
// and checks it went to B.
func (d *svcDatapath) closeFlow(t *testing.T, syn flow, flags uint8) {
	t.Helper()
	c := syn
	c.TCPFlags, c.ID = flags, syn.ID+1
	expectForwarded(t, d.send(t, podA, c.sentBy(podA)), c.to(podB.IP, backendPort).routedInto(podB))
	e, _ := d.ctEntry(t, ctKeyOf(syn))
	if e.TcpFlags&(tcpFIN|tcpRST) == 0 {
		t.Fatalf("forward entry flags %#x after the closing segment", e.TcpFlags)
	}
}

// The first packet of a flow may run on two CPUs at once (a SYN and its
// retransmission, two UDP datagrams sent back to back). Both pick a backend
// at random; conntrack must keep one choice and the other packet must adopt
// it: every flow's packets go to one backend, with one reply entry.
func TestServiceFirstPacketsRaceOnTwoCPUs(t *testing.T) {
	var online unix.CPUSet
	if err := unix.SchedGetaffinity(0, &online); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for c := 0; c < 1024 && len(cpus) < 2; c++ {
		if online.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < 2 {
		t.Skipf("needs two CPUs to race on, this process may use %d", online.Count())
	}
	requireIngressIfindex(t)

	for _, proto := range []uint8{protoTCP, protoUDP} {
		name := map[uint8]string{protoTCP: "tcp", protoUDP: "udp"}[proto]
		t.Run(name, func(t *testing.T) {
			d := newServiceDatapath(t, clusterIP(proto, backendB, backendC, backendRemote))
			const flows = 3000
			frames := make([][]byte, flows)
			for i := range frames {
				f := udpFlow(podA.IP, uint16(20000+i), vip, vipPort)
				if proto == protoTCP {
					f = tcpFlow(podA.IP, uint16(20000+i), vip, vipPort, tcpSYN)
				}
				frames[i] = f.sentBy(podA)
			}

			// Both CPUs send flow i's first packet together: each waits
			// for the other at every flow (a spin, both threads running).
			var arrived [flows]atomic.Int32
			got := [2][]netip.AddrPort{make([]netip.AddrPort, flows), make([]netip.AddrPort, flows)}
			errs := make(chan error, 2)
			var wg sync.WaitGroup
			for w := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- raceFirstPackets(d.fromPod, cpus[w], frames, arrived[:], got[w])
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}

			split, perBackend := 0, map[netip.Addr]int{}
			ct := d.ctAll(t)
			for i, f := range frames {
				a, b := got[0][i], got[1][i]
				if a != b {
					split++
					if split <= 5 {
						t.Errorf("flow %d split: one packet to %s, the other to %s", i, a, b)
					}
					continue
				}
				be, ok := backendAt(allBackends, a)
				if !ok {
					t.Fatalf("flow %d went to %s, no backend", i, a)
				}
				perBackend[be.Addr]++
				sport := uint16(20000 + i)
				e, ok := ct[ctKey(proto, podA.IP, sport, vip, vipPort)]
				if !ok || e.BackendId != be.ID || e.Packets != 2 || e.Bytes != uint64(2*len(f)) {
					t.Errorf("flow %d: forward entry %+v (present %v), want backend %d after 2 packets", i, e, ok, be.ID)
				}
				for _, other := range allBackends {
					_, has := ct[ctKey(proto, other.Addr, other.Port, podA.IP, sport)]
					if has != (other.ID == be.ID) {
						t.Errorf("flow %d on backend %d: reply entry for backend %d present: %v", i, be.ID, other.ID, has)
					}
				}
			}
			if split > 0 {
				t.Fatalf("%d of %d flows split between backends", split, flows)
			}
			// Random among three: each gets a share, or nothing was chosen.
			for _, be := range []backend{beB, beC, beRemote} {
				if perBackend[be.Addr] < flows/6 {
					t.Errorf("backend %d got %d of %d flows: %v", be.ID, perBackend[be.Addr], flows, perBackend)
				}
			}
			t.Logf("%d flows, each sent on CPUs %v at once: one backend each, spread %v", flows, cpus, perBackend)
		})
	}
}

// raceFirstPackets runs from_pod on every frame in turn on cpu, meeting the
// other worker before each, and records where each frame was sent.
func raceFirstPackets(prog *ebpf.Program, cpu int, frames [][]byte, arrived []atomic.Int32, dst []netip.AddrPort) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return err
	}
	out := make([]byte, 512)
	for i, frame := range frames {
		arrived[i].Add(1)
		for arrived[i].Load() < 2 {
		}
		opts := ebpf.RunOptions{
			Data:    slices.Clone(frame),
			DataOut: out,
			Context: skbContext{IngressIfindex: podA.Ifindex},
			Repeat:  1,
		}
		ret, err := prog.Run(&opts)
		if err != nil {
			return fmt.Errorf("cpu %d: run from_pod: %w", cpu, err)
		}
		if ret != tcActRedirect && ret != tcActOK {
			return fmt.Errorf("cpu %d, frame %d: verdict %d", cpu, i, ret)
		}
		dst[i] = dstOf(opts.DataOut)
	}
	return nil
}
