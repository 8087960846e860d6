package runtimetest

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/ctrtest"
)

// cniResult is the part of a CNI result the tests look at.
type cniResult struct {
	CNIVersion string `json:"cniVersion"`
	IPs        []struct {
		Address string `json:"address"`
	} `json:"ips"`
}

// TestCNITool drives podpath-cni with cnitool, which calls plugins through
// libcni exactly as container runtimes do: ADD two pods, talk TCP between
// them, CHECK, then DEL (once more to show it is idempotent, and once after
// the pod's netns is gone).
func TestCNITool(t *testing.T) {
	requireRoot(t)
	cnitool := ctrtest.RequireTool(t, "cnitool", goBin(t))
	n := newNode(t, "cnitool", netip.MustParsePrefix("10.244.61.0/24"))
	n.writeConflist(t, "1.1.0")
	// libcni caches results under /var/lib/cni whatever the runtime; the
	// network name is this test's own, so its leftovers are identifiable.
	t.Cleanup(func() {
		leftovers, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", n.name+"-*"))
		for _, f := range leftovers {
			os.Remove(f)
		}
	})

	type netnsPod struct {
		name      string
		netnsName string
		netns     string
		ip        netip.Addr
		hostVeth  uint32 // ifindex in the node
	}
	var pods []*netnsPod
	for _, name := range []string{"a", "b"} {
		p := &netnsPod{name: name, netnsName: n.name + "-" + name}
		p.netns = addNetns(t, p.netnsName)
		// Registered after the netns, so it runs before the netns goes.
		t.Cleanup(func() { n.cnitool(cnitool, "del", p.netns) })

		start := time.Now()
		out, err := n.cnitool(cnitool, "add", p.netns)
		if err != nil {
			t.Fatalf("cnitool add %s: %v", name, err)
		}
		t.Logf("cnitool add %s: %v", name, time.Since(start).Round(time.Millisecond))
		var res cniResult
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("cnitool add %s printed no CNI result: %v\n%s", name, err, out)
		}
		if len(res.IPs) != 1 {
			t.Fatalf("pod %s: want one address in the result, got %s", name, out)
		}
		addr, err := netip.ParsePrefix(res.IPs[0].Address)
		if err != nil {
			t.Fatalf("pod %s: result address: %v", name, err)
		}
		p.ip = addr.Addr()
		if !n.podCIDR.Contains(p.ip) {
			t.Fatalf("pod %s got %s, outside the pod CIDR %s", name, p.ip, n.podCIDR)
		}
		if !containsAddr(ifaceAddrs(t, p.netns, "eth0"), p.ip) {
			t.Fatalf("pod %s: eth0 does not carry %s", name, p.ip)
		}
		ep, ok := n.endpoints(t)[p.ip]
		if !ok {
			t.Fatalf("pod %s (%s) is not in the endpoints map", name, p.ip)
		}
		if _, ok := n.veths(t)[int(ep.Ifindex)]; !ok {
			t.Fatalf("endpoint %s points at ifindex %d, which is no veth in the node", p.ip, ep.Ifindex)
		}
		p.hostVeth = ep.Ifindex
		pods = append(pods, p)
	}
	a, b := pods[0], pods[1]
	if a.ip == b.ip {
		t.Fatalf("both pods got %s", a.ip)
	}

	before := n.forwarded(t)
	for _, p := range pods {
		serveTCP(t, p.netns, 8080, "hello from "+p.name)
	}
	for _, pair := range [][2]*netnsPod{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		got, err := talkTCP(from.netns, netip.AddrPortFrom(to.ip, 8080), "", 5*time.Second)
		if err != nil {
			t.Fatalf("pod %s -> pod %s: %v", from.name, to.name, err)
		}
		if want := "hello from " + to.name + "\n"; got != want {
			t.Fatalf("pod %s -> pod %s: got %q, want %q", from.name, to.name, got, want)
		}
	}
	if after := n.forwarded(t); after <= before {
		t.Errorf("from_pod forward_local stayed at %d: pod-to-pod traffic bypassed the datapath", after)
	}

	for _, p := range pods {
		if out, err := n.cnitool(cnitool, "check", p.netns); err != nil {
			t.Errorf("cnitool check %s: %v\n%s", p.name, err, out)
		}
	}

	// DEL with the netns present, then again: the second must be a no-op.
	for i := range 2 {
		if out, err := n.cnitool(cnitool, "del", a.netns); err != nil {
			t.Fatalf("cnitool del a (#%d): %v\n%s", i+1, err, out)
		}
	}
	if hasLink(t, a.netns, "eth0") {
		t.Errorf("pod a still has eth0 after DEL")
	}
	if _, ok := n.endpoints(t)[a.ip]; ok {
		t.Errorf("pod a (%s) still in the endpoints map after DEL", a.ip)
	}
	if name, ok := n.veths(t)[int(a.hostVeth)]; ok {
		t.Errorf("pod a's host veth %s survived DEL", name)
	}

	// DEL after the netns is gone, as when a node reboots or a runtime
	// cleans up late: it must still succeed and release the endpoint.
	if err := delNetns(b.netnsName); err != nil {
		t.Fatal(err)
	}
	if out, err := n.cnitool(cnitool, "del", b.netns); err != nil {
		t.Fatalf("cnitool del b without its netns: %v\n%s", err, out)
	}
	if eps := n.endpoints(t); len(eps) != 0 {
		t.Errorf("endpoints left after every DEL: %v", eps)
	}
	if veths := n.veths(t); len(veths) != 0 {
		t.Errorf("veths left in the node after every DEL: %v", veths)
	}
}

// cnitool runs `cnitool <verb> <network> <netns>` inside the node's netns
// with the node's plugins and configuration.
func (n *node) cnitool(cnitool, verb, podNetns string) ([]byte, error) {
	cmd := n.command([]string{
		"CNI_PATH=" + n.binDir,
		"NETCONFPATH=" + n.confDir,
		"CNI_IFNAME=eth0",
	}, cnitool, verb, n.name, podNetns)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return []byte(stdout.String() + stderr.String()), fmt.Errorf("%w: %s%s", err, stdout.String(), stderr.String())
	}
	return []byte(stdout.String()), nil
}

func containsAddr(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Addr() == ip {
			return true
		}
	}
	return false
}
