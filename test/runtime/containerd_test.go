package runtimetest

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/ctrtest"
	"github.com/podpath/podpath/internal/sim"
)

// TestContainerd runs real pods: containerd creates two sandboxes through
// the CRI and calls podpath-cni for them, a busybox httpd serves in one, and
// the other reaches it, both from its netns and from a container of its own.
// Stopping and removing the pods must release the endpoints and veths.
func TestContainerd(t *testing.T) {
	requireRoot(t)
	ctrtest.RequireTools(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "nsenter", "unshare")
	busybox := ctrtest.RequireStaticBusybox(t)
	n := newNode(t, "cri", netip.MustParsePrefix("10.244.62.0/24"))
	n.writeConflist(t, "1.0.0") // containerd 1.6 speaks CNI up to 1.0.0
	calls := n.recordPluginCalls(t)

	bins := buildArtifacts(t)
	cd := ctrtest.Start(t, ctrtest.Options{NetNS: n.netns, BinDir: n.binDir, ConfDir: n.confDir})
	cri := dialCRI(t, cd)
	cd.ImportImages(t, ctrtest.WriteImages(t, t.TempDir(), bins.pause, busybox))
	cri.waitImage(t, ctrtest.PauseImage)
	cri.waitImage(t, ctrtest.BusyboxImage)

	web := cri.runPod(t, "web", cd.CgroupParent)
	client := cri.runPod(t, "client", cd.CgroupParent)
	if web.ip == client.ip {
		t.Fatalf("both pods got %s", web.ip)
	}
	eps := n.endpoints(t)
	hostVeths := map[string]string{}
	for _, p := range []*pod{web, client} {
		if !n.podCIDR.Contains(p.ip) {
			t.Fatalf("pod %s got %s, outside the pod CIDR %s", p.name, p.ip, n.podCIDR)
		}
		ep, ok := eps[p.ip]
		if !ok {
			t.Fatalf("pod %s (%s) is not in the endpoints map: %v", p.name, p.ip, eps)
		}
		veth, ok := n.veths(t)[int(ep.Ifindex)]
		if !ok {
			t.Fatalf("endpoint %s points at ifindex %d, which is no veth in the node", p.ip, ep.Ifindex)
		}
		hostVeths[p.name] = veth
	}

	before := n.forwarded(t)
	cri.runContainer(t, web, "httpd",
		"mkdir -p /www && echo hello from web > /www/index.html && exec httpd -f -p 8080 -h /www")
	webAddr := netip.AddrPortFrom(web.ip, 8080)
	got, err := talkTCP(client.netns(), webAddr, "GET / HTTP/1.0\r\n\r\n", 10*time.Second)
	if err != nil {
		t.Fatalf("client pod's netns -> web: %v", err)
	}
	if !strings.Contains(got, "200 OK") || !strings.Contains(got, "hello from web") {
		t.Fatalf("client pod's netns -> web: unexpected answer %q", got)
	}
	wget := cri.runContainer(t, client, "wget", fmt.Sprintf("timeout 5 wget -qO- http://%s/", webAddr))
	code, out := cri.waitExit(t, client, wget, "wget", 15*time.Second)
	if code != 0 || out != "hello from web\n" {
		t.Fatalf("wget container in the client pod: exit %d, output %q", code, out)
	}
	if after := n.forwarded(t); after <= before {
		t.Errorf("from_pod forward_local stayed at %d: pod-to-pod traffic bypassed the datapath", after)
	}

	for _, p := range []*pod{web, client} {
		cri.stopPod(t, p)
		if _, ok := n.endpoints(t)[p.ip]; ok {
			t.Errorf("pod %s (%s) still in the endpoints map after StopPodSandbox", p.name, p.ip)
		}
		cri.removePod(t, p)
		for _, name := range n.veths(t) {
			if name == hostVeths[p.name] {
				t.Errorf("pod %s's host veth %s survived RemovePodSandbox", p.name, name)
			}
		}
	}
	if left := cri.sandboxes(t); len(left) != 0 {
		t.Errorf("runtime still lists %d pods after removal", len(left))
	}
	if eps := n.endpoints(t); len(eps) != 0 {
		t.Errorf("endpoints left after every pod was removed: %v", eps)
	}
	if veths := n.veths(t); len(veths) != 0 {
		t.Errorf("veths left in the node after every pod was removed: %v", veths)
	}

	// What kubelet's runtime promised the plugin: ADD once, DEL at stop with
	// the netns, DEL again at removal without it; all succeeded.
	for _, p := range []*pod{web, client} {
		want := []string{
			"ADD netns=set rc=0",
			"DEL netns=set rc=0",
			"DEL netns=empty rc=0",
		}
		if got := calls(p.id); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("plugin calls for pod %s:\n%s\nwant:\n%s", p.name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

// recordPluginCalls puts a wrapper in front of the plugin in a bin dir of
// the node's own, logging each call's verb, whether CNI_NETNS was set and
// the exit code. It returns a reader of the calls made for one container.
func (n *node) recordPluginCalls(t *testing.T) func(containerID string) []string {
	t.Helper()
	dir := t.TempDir()
	binDir := filepath.Join(dir, "bin")
	logPath := filepath.Join(dir, "calls.log")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"loopback"} {
		if err := os.Symlink(filepath.Join(n.binDir, name), filepath.Join(binDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	wrapper := fmt.Sprintf(`#!/bin/sh
%q "$@"
rc=$?
netns=set
[ -n "$CNI_NETNS" ] || netns=empty
echo "$CNI_CONTAINERID $CNI_COMMAND netns=$netns rc=$rc" >> %q
exit $rc
`, filepath.Join(n.binDir, sim.PluginType), logPath)
	if err := os.WriteFile(filepath.Join(binDir, sim.PluginType), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	n.binDir = binDir
	return func(containerID string) []string {
		b, _ := os.ReadFile(logPath)
		var out []string
		for _, line := range strings.Split(string(b), "\n") {
			id, call, ok := strings.Cut(line, " ")
			if ok && id == containerID && !strings.HasPrefix(call, "VERSION") {
				out = append(out, call)
			}
		}
		return out
	}
}
