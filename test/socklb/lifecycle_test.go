package socklb_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
)

// hooks are the cgroup hooks the socket programs attach to.
var hooks = map[string]ebpf.AttachType{
	maps.ProgSockConnect4:     ebpf.AttachCGroupInet4Connect,
	maps.ProgSockSendmsg4:     ebpf.AttachCGroupUDP4Sendmsg,
	maps.ProgSockRecvmsg4:     ebpf.AttachCGroupUDP4Recvmsg,
	maps.ProgSockGetpeername4: ebpf.AttachCgroupInet4GetPeername,
}

// attached returns the programs the kernel runs at each hook of cgroup.
func attached(t *testing.T, cgroup string) map[string][]ebpf.ProgramID {
	t.Helper()
	dir, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	out := map[string][]ebpf.ProgramID{}
	for name, hook := range hooks {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(dir.Fd()), Attach: hook})
		if err != nil {
			t.Fatalf("query %s programs of %s: %v", name, cgroup, err)
		}
		for _, p := range res.Programs {
			out[name] = append(out[name], p.ID)
		}
	}
	return out
}

// pinnedProgs returns the ids of the node's pinned socket programs.
func pinnedProgs(t *testing.T, root string) map[string][]ebpf.ProgramID {
	t.Helper()
	out := map[string][]ebpf.ProgramID{}
	for _, name := range maps.SocketPrograms {
		p, err := loader.LoadPinnedProgram(root, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		out[name] = []ebpf.ProgramID{id}
	}
	return out
}

func sameIDs(a, b map[string][]ebpf.ProgramID) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if len(b[k]) != len(v) {
			return false
		}
		for i := range v {
			if b[k][i] != v[i] {
				return false
			}
		}
	}
	return true
}

// escaped is a cgroup path as its link pins name it (systemd-escape --path,
// dashes escaped; the test's paths hold no other special characters).
func escaped(path string) string {
	return strings.ReplaceAll(strings.ReplaceAll(strings.Trim(path, "/"), "-", `\x2d`), "/", "-")
}

// Attaching pins one link per hook, named after the cgroup; attaching again
// keeps those links; loader.Init (an upgrade) swaps new programs into them
// in place; detaching leaves the cgroup without programs and its sockets
// untranslated; and node reset detaches too.
func TestAttachReplaceDetach(t *testing.T) {
	f := newCgroupFixture(t)
	n := newTestNode(t, "life", 9, 1)
	n.writeClusterIPs(t)
	cg := f.newCgroup(t, "life")
	front := netip.AddrPortFrom(vip, frontendPort).String()
	reached := func(when string) {
		t.Helper()
		res := client(t, f, cg, n.NS.Path(), clientOp{Kind: opTCP, Addr: front, Count: 1})
		if e := res[0].Exchanges[0]; e.Errno != "" || e.Peer != front {
			t.Fatalf("%s: connect to %s: %+v, want it translated", when, front, e)
		}
	}
	notTranslated := func(when string) {
		t.Helper()
		res := client(t, f, cg, n.NS.Path(), clientOp{Kind: opTCP, Addr: front, Count: 1})
		if e := res[0].Exchanges[0]; e.Errno != "ENETUNREACH" {
			t.Fatalf("%s: connect to %s: %+v, want ENETUNREACH (untranslated)", when, front, e)
		}
	}

	// The mount is there now; a missing cgroup inside it is not created.
	if mounted, err := loader.EnsureCgroup2(f.mount); err != nil || mounted {
		t.Fatalf("EnsureCgroup2 on a cgroup2 mount: mounted %v, %v; want it left alone", mounted, err)
	}
	if err := loader.AttachSocketLB(n.PinRoot, filepath.Join(f.mount, "no-such-cgroup")); err == nil {
		t.Fatal("attached to a cgroup that does not exist")
	} else {
		t.Logf("missing cgroup refused: %v", err)
	}

	attach(t, n, cg)
	for _, name := range maps.SocketPrograms {
		pin := filepath.Join(maps.LinkDir(n.PinRoot), name+"@cgroup@"+escaped(cg))
		if _, err := os.Stat(pin); err != nil {
			t.Errorf("link pin of %s: %v", name, err)
		}
	}
	atts, err := loader.CgroupAttachments(n.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	if len(atts) != len(maps.SocketPrograms) {
		t.Fatalf("CgroupAttachments = %+v, want the %d socket programs", atts, len(maps.SocketPrograms))
	}
	for _, a := range atts {
		if a.Cgroup != cg || a.CgroupID == 0 || a.ProgramID == 0 {
			t.Errorf("attachment %+v: want cgroup %s, with ids", a, cg)
		}
	}
	first := pinnedProgs(t, n.PinRoot)
	if got := attached(t, cg); !sameIDs(got, first) {
		t.Fatalf("programs on the cgroup %v, want the pinned %v", got, first)
	}
	reached("attached")

	// Attaching again changes nothing: still one program per hook.
	if err := loader.AttachSocketLB(n.PinRoot, cg); err != nil {
		t.Fatal(err)
	}
	if got := attached(t, cg); !sameIDs(got, first) {
		t.Fatalf("after attaching twice: programs %v, want %v", got, first)
	}

	// An upgrade: Init loads new programs and swaps them into the links.
	c, err := loader.ReadNodeConfig(n.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Do(func() error { return loader.Init(c) }); err != nil {
		t.Fatalf("re-init: %v", err)
	}
	second := pinnedProgs(t, n.PinRoot)
	if sameIDs(second, first) {
		t.Fatal("Init did not load new socket programs")
	}
	if got := attached(t, cg); !sameIDs(got, second) {
		t.Fatalf("after re-init: programs on the cgroup %v, want the new %v", got, second)
	}
	reached("after re-init")

	if err := loader.DetachSocketLB(n.PinRoot, cg); err != nil {
		t.Fatal(err)
	}
	if got := attached(t, cg); len(got) != 0 {
		t.Fatalf("after detach: programs on the cgroup %v, want none", got)
	}
	if atts, err := loader.CgroupAttachments(n.PinRoot); err != nil || len(atts) != 0 {
		t.Fatalf("after detach: attachments %+v, %v; want none", atts, err)
	}
	notTranslated("after detach")

	// node reset takes the cgroup attachments with everything else; the
	// node is initialised again so it can be closed as usual.
	if err := loader.AttachSocketLB(n.PinRoot, cg); err != nil {
		t.Fatal(err)
	}
	if err := n.Do(func() error { return loader.Reset(n.PinRoot, n.StateDir) }); err != nil {
		t.Fatalf("reset: %v", err)
	}
	if got := attached(t, cg); len(got) != 0 {
		t.Fatalf("after reset: programs on the cgroup %v, want none", got)
	}
	if err := n.Do(func() error { return loader.Init(c) }); err != nil {
		t.Fatalf("init after reset: %v", err)
	}
}
