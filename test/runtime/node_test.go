package runtimetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/podpath/podpath/internal/ctrtest"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// node is a podpath node in a network namespace of its own: the datapath is
// loaded under a private pin root, and the runtime under test finds the
// plugin in a private bin dir and the network in a private conf dir.
type node struct {
	name     string // netns name, also the CNI network name
	netns    string // path of the node's netns
	pinRoot  string
	stateDir string
	podCIDR  netip.Prefix
	confDir  string
	binDir   string
}

// newNode creates the node's netns, runs loader.Init in it and registers the
// teardown: reset the datapath, remove pins, state and netns.
func newNode(t *testing.T, role string, podCIDR netip.Prefix) *node {
	t.Helper()
	requireRoot(t)
	ctrtest.RequireTools(t, "ip", "nsenter")
	bins := buildArtifacts(t)

	dir := t.TempDir()
	n := &node{
		name:     fmt.Sprintf("podpath-rt-%d-%s", os.Getpid(), role),
		pinRoot:  fmt.Sprintf("/sys/fs/bpf/podpath-rt-%d-%s", os.Getpid(), role),
		stateDir: filepath.Join(dir, "state"),
		podCIDR:  podCIDR,
		confDir:  filepath.Join(dir, "net.d"),
		binDir:   bins.cniBin,
	}
	n.netns = addNetns(t, n.name)
	n.exec(t, "ip", "link", "set", "lo", "up")

	t.Cleanup(func() {
		err := ns.WithNetNSPath(n.netns, func(ns.NetNS) error {
			return loader.Reset(n.pinRoot, n.stateDir)
		})
		if err != nil {
			t.Errorf("reset node %s: %v", n.name, err)
		}
		os.RemoveAll(n.pinRoot)
	})
	cfg := loader.Config{PinRoot: n.pinRoot, StateDir: n.stateDir, PodCIDR: podCIDR}
	if err := ns.WithNetNSPath(n.netns, func(ns.NetNS) error { return loader.Init(cfg) }); err != nil {
		t.Fatalf("load datapath in %s: %v", n.name, err)
	}
	if err := os.MkdirAll(n.confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return n
}

// conflist is the node's CNI network as a runtime reads it.
func (n *node) conflist(cniVersion string) []byte {
	conf := map[string]any{
		"cniVersion": cniVersion,
		"name":       n.name,
		"plugins": []any{map[string]any{
			"type":     sim.PluginType,
			"pinRoot":  n.pinRoot,
			"stateDir": n.stateDir,
			"podCIDR":  n.podCIDR.String(),
			"mtu":      1500,
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		panic(err)
	}
	return b
}

// writeConflist installs the node's network in its conf dir. Runtimes read
// the first conflist in lexical order, so there is only ever this one.
func (n *node) writeConflist(t testing.TB, cniVersion string) {
	t.Helper()
	path := filepath.Join(n.confDir, "10-podpath.conflist")
	if err := os.WriteFile(path, n.conflist(cniVersion), 0o644); err != nil {
		t.Fatal(err)
	}
}

// exec runs a command in the node's netns only. nsenter, not `ip netns
// exec`: the latter also unshares the mount namespace and remounts /sys,
// which hides the bpffs at /sys/fs/bpf and with it the node's pins.
func (n *node) exec(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.command(nil, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), n.name, err, out)
	}
	return string(out)
}

// command prepares name to run in the node's netns with extra environment.
func (n *node) command(env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.netns, "--", name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// endpoints lists the pods registered in the node's pinned endpoints map.
func (n *node) endpoints(t testing.TB) map[netip.Addr]maps.EndpointInfo {
	t.Helper()
	eps, err := maps.OpenEndpoints(n.pinRoot)
	if err != nil {
		t.Fatalf("open endpoints of %s: %v", n.name, err)
	}
	defer eps.Close()
	list, err := eps.List()
	if err != nil {
		t.Fatalf("list endpoints of %s: %v", n.name, err)
	}
	out := make(map[netip.Addr]maps.EndpointInfo, len(list))
	for _, ep := range list {
		out[ep.IP] = ep.Info
	}
	return out
}

// forwarded is how many packets from_pod redirected straight to a local pod.
func (n *node) forwarded(t testing.TB) uint64 {
	t.Helper()
	counters, err := maps.ReadPinnedCounters(n.pinRoot)
	if err != nil {
		t.Fatalf("read counters of %s: %v", n.name, err)
	}
	var total uint64
	for _, c := range counters {
		if c.Hook.String() == maps.ProgFromPod && c.Reason.String() == "forward_local" {
			total += c.Packets
		}
	}
	return total
}

// veths lists the veth devices in the node's netns by ifindex.
func (n *node) veths(t testing.TB) map[int]string {
	t.Helper()
	out := map[int]string{}
	err := ns.WithNetNSPath(n.netns, func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Type() == "veth" {
				out[l.Attrs().Index] = l.Attrs().Name
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list links in %s: %v", n.name, err)
	}
	return out
}

// addNetns creates a named network namespace (what `ip netns add` makes,
// a bind mount under /run/netns) and deletes it at the end of the test.
func addNetns(t testing.TB, name string) string {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	path := filepath.Join("/run/netns", name)
	t.Cleanup(func() { delNetns(name) })
	return path
}

// delNetns removes a named netns; removing a missing one is not an error.
func delNetns(name string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", name, err, out)
	}
	return nil
}

// ifaceAddrs lists the IPv4 addresses of ifname inside the netns at path.
func ifaceAddrs(t testing.TB, netnsPath, ifname string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP.To4())
			ones, _ := a.Mask.Size()
			out = append(out, netip.PrefixFrom(ip, ones))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("addresses of %s in %s: %v", ifname, netnsPath, err)
	}
	return out
}

// hasLink tells whether ifname exists inside the netns at path.
func hasLink(t testing.TB, netnsPath, ifname string) bool {
	t.Helper()
	var found bool
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		_, err := netlink.LinkByName(ifname)
		if _, missing := err.(netlink.LinkNotFoundError); missing {
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		t.Fatalf("look up %s in %s: %v", ifname, netnsPath, err)
	}
	return found
}

// serveTCP listens on port inside the netns at path and answers every
// connection with greeting. The socket belongs to that netns from its
// creation, so accepting from any thread is fine.
func serveTCP(t testing.TB, netnsPath string, port int, greeting string) {
	t.Helper()
	var l net.Listener
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", netnsPath, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintln(c, greeting)
			c.Close()
		}
	}()
}

// talkTCP connects from inside the netns at path to addr, sends request and
// returns what the peer sends before closing. It retries until deadline, so
// a server that is still starting is waited for.
func talkTCP(netnsPath string, addr netip.AddrPort, request string, deadline time.Duration) (string, error) {
	var lastErr error
	for end := time.Now().Add(deadline); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		var c net.Conn
		lastErr = ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
			var err error
			c, err = net.DialTimeout("tcp4", addr.String(), time.Second)
			return err
		})
		if lastErr != nil {
			continue
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.WriteString(c, request); err != nil {
			c.Close()
			lastErr = err
			continue
		}
		b := make([]byte, 0, 512)
		buf := make([]byte, 512)
		for {
			k, err := c.Read(buf)
			b = append(b, buf[:k]...)
			if err != nil {
				break
			}
		}
		c.Close()
		return string(b), nil
	}
	return "", fmt.Errorf("connect to %s from %s: %w", addr, netnsPath, lastErr)
}
