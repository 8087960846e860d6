// Package socklb_test checks socket-level load balancing (bpf/sock.c) end to
// end: a simulated node with backend pods, ClusterIP services written into
// its pinned maps, the socket programs attached to a cgroup v2 of the test's
// own, and client processes (this test binary, re-executed) started inside
// that cgroup and inside the node's network namespace. Needs root.
package socklb_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	stdmaps "maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// cniBin is the plugin directory built once for every test.
var cniBin string

func TestMain(m *testing.M) {
	if req := os.Getenv(clientEnv); req != "" {
		os.Exit(clientMain(req))
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the socket load balancing tests need root (network namespaces, BPF, cgroups): run them as root")
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "podpath-socklb-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cniBin, err = sim.BuildCNI(dir)
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// The services every test uses. The frontend port differs from the
// backends' so a translated port shows as plainly as a translated address.
var (
	vip          = netip.MustParseAddr("10.96.0.10")
	vipEmpty     = netip.MustParseAddr("10.96.0.11") // a service without backends
	frontendPort = uint16(80)
	nodePort     = uint16(30080)
	backendPort  = uint16(8080)
)

// testNode is a simulated node with backend pods serving TCP and UDP on
// backendPort, and its services written into the pinned maps.
type testNode struct {
	*sim.Node
	addr     netip.Addr // the node's own address (its uplink's)
	backends []*sim.Pod
}

// newTestNode creates a node named name with pod CIDR 10.212.<n>.0/24 and
// node address 10.251.<n>.1, and backend pods web-1..web-<backends>.
func newTestNode(t *testing.T, name string, n, backends int) *testNode {
	t.Helper()
	cidr := netip.MustParsePrefix(fmt.Sprintf("10.212.%d.0/24", n))
	node, err := sim.NewNode(name, cidr, sim.WithCNIBin(cniBin), sim.WithUplink(
		netip.MustParsePrefix(fmt.Sprintf("10.251.%d.1/24", n)),
		netip.MustParsePrefix(fmt.Sprintf("10.251.%d.2/24", n))))
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	t.Cleanup(func() {
		if err := node.Close(); err != nil {
			t.Errorf("close node %s: %v", name, err)
		}
	})
	tn := &testNode{Node: node, addr: node.Outside.NodeIP}
	for i := 1; i <= backends; i++ {
		tn.backends = append(tn.backends, tn.addPod(t, fmt.Sprintf("web-%d", i), true))
	}
	return tn
}

// addPod adds a pod, serving TCP and UDP echo on backendPort when serve.
func (n *testNode) addPod(t *testing.T, name string, serve bool) *sim.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := n.AddPod(ctx, name)
	if err != nil {
		t.Fatalf("add pod %s: %v", name, err)
	}
	if serve {
		serveEcho(t, p)
	}
	return p
}

// backendAddrs are the node's backends as a service names them.
func (n *testNode) backendAddrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, p := range n.backends {
		out = append(out, netip.AddrPortFrom(p.IP, backendPort))
	}
	return out
}

// writeClusterIPs gives the node its services: vip:80 over TCP and UDP to
// every backend, the NodePort nodePort over TCP, and vipEmpty:80 over TCP
// and UDP without backends.
func (n *testNode) writeClusterIPs(t *testing.T) {
	t.Helper()
	b := n.backendAddrs()
	putService(t, n.PinRoot, 1, vip, frontendPort, unix.IPPROTO_TCP, 0, b...)
	putService(t, n.PinRoot, 2, vip, frontendPort, unix.IPPROTO_UDP, 0, b...)
	putService(t, n.PinRoot, 3, netip.Addr{}, nodePort, unix.IPPROTO_TCP, maps.SvcFlagNodePort, b...)
	putService(t, n.PinRoot, 4, vipEmpty, frontendPort, unix.IPPROTO_TCP, 0)
	putService(t, n.PinRoot, 5, vipEmpty, frontendPort, unix.IPPROTO_UDP, 0)
}

// putService writes one internal-scope frontend into the pinned maps in the
// order the datapath relies on: backends, slots, then the frontend with its
// backend count. An invalid addr is the NodePort wildcard.
func putService(t *testing.T, root string, id uint32, addr netip.Addr, port uint16, proto uint8, flags uint8, backends ...netip.AddrPort) {
	t.Helper()
	bm, sm, svcm := openMap(t, root, maps.MapBackends), openMap(t, root, maps.MapSvcSlots), openMap(t, root, maps.MapServices)
	for i, b := range backends {
		bid := id*100 + uint32(i) + 1
		be := maps.Backend{Addr: maps.Addr16(b.Addr()), Port: maps.Port(b.Port()), Family: maps.FamilyIPv4}
		if err := bm.Update(&bid, &be, ebpf.UpdateAny); err != nil {
			t.Fatalf("backend %d: %v", bid, err)
		}
		sk := maps.SlotKey{SvcId: id, Slot: uint32(i) + 1}
		if err := sm.Update(&sk, &bid, ebpf.UpdateAny); err != nil {
			t.Fatalf("slot %d of service %d: %v", i+1, id, err)
		}
	}
	key := maps.SvcKey{Port: maps.Port(port), Proto: proto, Family: maps.FamilyIPv4, Scope: uint8(maps.ScopeInternal)}
	if addr.IsValid() {
		key.Addr = maps.Addr16(addr)
	}
	info := maps.SvcInfo{Id: id, Backends: uint16(len(backends)), Algo: uint8(maps.AlgoRandom), Flags: flags}
	if err := svcm.Update(&key, &info, ebpf.UpdateAny); err != nil {
		t.Fatalf("service %d: %v", id, err)
	}
}

func openMap(t *testing.T, root, name string) *ebpf.Map {
	t.Helper()
	m, err := maps.OpenPinned(root, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// serveEcho answers on backendPort, TCP and UDP, with the pod's name and the
// client address it saw: "web-1 10.251.1.1:41234".
func serveEcho(t *testing.T, p *sim.Pod) {
	t.Helper()
	addr := net.JoinHostPort(p.IP.String(), fmt.Sprint(backendPort))
	var ln net.Listener
	var pc net.PacketConn
	if err := p.Do(func() (err error) {
		if ln, err = net.Listen("tcp4", addr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s", p.Name, c.RemoteAddr())
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			fmt.Fprintf(writerTo{pc, from}, "%s %s", p.Name, from)
		}
	}()
}

type writerTo struct {
	pc net.PacketConn
	to net.Addr
}

func (w writerTo) Write(b []byte) (int, error) { return w.pc.WriteTo(b, w.to) }

// cgroupFixture is a cgroup v2 mount of the test's own, removed afterwards.
type cgroupFixture struct {
	mount string
}

// requireNetnsCookie skips a test of socket load balancing on a kernel that
// cannot report network namespace cookies: podpath does not offer it there,
// and TestRefusedWithoutNetnsCookie checks that it says so.
func requireNetnsCookie(t *testing.T) {
	t.Helper()
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	if !f.NetnsCookie {
		t.Skipf("kernel %s: %v; socket load balancing is not offered here (TestRefusedWithoutNetnsCookie checks the refusal)", f.Kernel, loader.ErrNoNetnsCookie)
	}
}

// newCgroupFixture mounts cgroup2 where nothing is mounted yet, through
// loader.EnsureCgroup2, as `node init` does on a cgroup v1 host.
func newCgroupFixture(t *testing.T) *cgroupFixture {
	t.Helper()
	requireNetnsCookie(t)
	base, err := os.MkdirTemp("/run", "podpath-socklb-")
	if err != nil {
		t.Fatal(err)
	}
	mount := filepath.Join(base, "cgroupv2")
	mounted, err := loader.EnsureCgroup2(mount)
	if err != nil {
		os.RemoveAll(base)
		t.Fatalf("mount cgroup2: %v", err)
	}
	t.Cleanup(func() {
		if mounted {
			if err := unix.Unmount(mount, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", mount, err)
			}
		}
		if err := os.RemoveAll(base); err != nil {
			t.Errorf("remove %s: %v", base, err)
		}
	})
	if !mounted {
		t.Fatalf("EnsureCgroup2(%s) on a new directory mounted nothing", mount)
	}
	return &cgroupFixture{mount: mount}
}

// newCgroup creates a cgroup for the test directly under the hierarchy's
// root, removed again (after its processes have exited) in cleanup.
func (f *cgroupFixture) newCgroup(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(f.mount, fmt.Sprintf("podpath-socklb-%d-%s", os.Getpid(), name))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A process that has just been reaped may still be leaving.
		var err error
		for range 50 {
			if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s: %v", dir, err)
	})
	return dir
}

// relative is a cgroup's path as /proc/<pid>/cgroup shows it.
func (f *cgroupFixture) relative(cgroup string) string {
	return "/" + strings.TrimPrefix(strings.TrimPrefix(cgroup, f.mount), "/")
}

// attach attaches node's socket programs to cgroup until the test ends.
func attach(t *testing.T, n *testNode, cgroup string) {
	t.Helper()
	if err := loader.AttachSocketLB(n.PinRoot, cgroup); err != nil {
		t.Fatalf("attach socket load balancing of node %s to %s: %v", n.Name, cgroup, err)
	}
	t.Cleanup(func() {
		if err := loader.DetachSocketLB(n.PinRoot, cgroup); err != nil {
			t.Errorf("detach socket load balancing of node %s from %s: %v", n.Name, cgroup, err)
		}
	})
}

// client runs ops in a new process placed in cgroup from its first
// instruction (clone3 with CLONE_INTO_CGROUP; "" leaves it in the test's
// cgroup) that enters the network namespace at netns before it opens any
// socket. It checks the process really ran in that cgroup.
func client(t *testing.T, f *cgroupFixture, cgroup, netns string, ops ...clientOp) []opResult {
	t.Helper()
	req, err := json.Marshal(clientRequest{Netns: netns, Ops: ops})
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), clientEnv+"="+string(req))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if cgroup != "" {
		dir, err := os.Open(cgroup)
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	}
	if err := cmd.Run(); err != nil {
		t.Fatalf("client process: %v\n%s", err, stderr.String())
	}
	var res clientResponse
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("client process output: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	if cgroup != "" && res.Cgroup != f.relative(cgroup) {
		t.Fatalf("client process ran in cgroup %q, want %q", res.Cgroup, f.relative(cgroup))
	} else if cgroup == "" && strings.HasPrefix(res.Cgroup, "/podpath-socklb-") {
		t.Fatalf("client process outside the test's cgroups ran in %q", res.Cgroup)
	}
	if len(res.Results) != len(ops) {
		t.Fatalf("client process answered %d operations of %d", len(res.Results), len(ops))
	}
	return res.Results
}

// conntrackEntries counts the node's conntrack entries: per-packet NAT
// creates two per translated flow.
func conntrackEntries(t *testing.T, root string) []maps.CtKey {
	t.Helper()
	all, err := maps.Entries[maps.CtKey, maps.CtEntry](openMap(t, root, maps.MapConntrack))
	if err != nil {
		t.Fatal(err)
	}
	return slices.Collect(stdmaps.Keys(all))
}

// sockRevEntry is one entry of the socket reverse translation map.
type sockRevEntry struct {
	Cookie   uint64
	Backend  netip.AddrPort
	Frontend netip.AddrPort
	SvcID    uint32
}

func sockRevEntries(t *testing.T, root string) []sockRevEntry {
	t.Helper()
	all, err := maps.Entries[maps.SockRevKey, maps.SockRevValue](openMap(t, root, maps.MapSockRevNat))
	if err != nil {
		t.Fatal(err)
	}
	var out []sockRevEntry
	for k, v := range all {
		out = append(out, sockRevEntry{
			Cookie:   k.Cookie,
			Backend:  netip.AddrPortFrom(maps.AddrFrom16(k.Family, k.Addr), maps.HostPort(k.Port)),
			Frontend: netip.AddrPortFrom(maps.AddrFrom16(v.Family, v.Addr), maps.HostPort(v.Port)),
			SvcID:    v.SvcId,
		})
	}
	return out
}
