// Package monitor_test runs `podpath monitor` against a simulated node: a
// pod's spoofed packets are dropped by from_pod, and the monitor shows
// them with their fields, filtered as asked.
package monitor_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the monitor tests need root (network namespaces, BPF): run them as root")
		os.Exit(1)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}

// event is what monitor -o json prints per event.
type event struct {
	Type, Reason, Hook, Device, Pod, Proto, Src, Dst string
	SrcPort, DstPort                                 uint16
	Len                                              uint32
}

// running is a podpath monitor process and the lines it printed.
type running struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func startMonitor(t *testing.T, bin string, node *sim.Node, args ...string) *running {
	t.Helper()
	args = append([]string{"--pin-root", node.PinRoot, "--state-dir", node.StateDir, "monitor"}, args...)
	r := &running{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	out, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errOut, err := r.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	// In the node's network namespace, where its devices are.
	if err := node.Do(r.cmd.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.cmd.Process.Kill(); <-r.done })
	go func() {
		defer close(r.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			r.mu.Lock()
			r.lines = append(r.lines, sc.Text())
			r.mu.Unlock()
		}
	}()
	// Ready once it says so (it reads the ring buffer and handles SIGINT
	// by then): a slow machine takes a while to start a process.
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(errOut)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "reading the drop events of ") {
				close(ready)
			}
			fmt.Fprintf(os.Stderr, "monitor: %s\n", sc.Text())
		}
	}()
	select {
	case <-ready:
	case <-time.After(time.Minute):
		t.Fatal("monitor did not say it was reading within a minute")
	}
	return r
}

// stop interrupts the monitor, which must exit cleanly, and returns what
// it printed.
func (r *running) stop(t *testing.T) []string {
	t.Helper()
	time.Sleep(500 * time.Millisecond) // the last events reach the reader
	if err := r.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	// A monitor that switched tracing on switches it off as it exits,
	// which reloads the node's programs (node init): seconds of
	// verification under an emulated CPU, as the test VMs have.
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("monitor did not exit within 30 s of SIGINT")
	}
	if err := r.cmd.Wait(); err != nil {
		t.Fatalf("monitor after SIGINT: %v, want exit status 0", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lines
}

// newMonitorNode is a simulated node named name with pod CIDR cidr and
// two pods, client and server, and the podpath binary to run against it.
func newMonitorNode(t *testing.T, name, cidr string) (bin string, node *sim.Node, client, server *sim.Pod) {
	t.Helper()
	dir := t.TempDir()
	cniBin, err := sim.BuildCNI(dir)
	if err != nil {
		t.Fatal(err)
	}
	if bin, err = sim.BuildPodpath(dir); err != nil {
		t.Fatal(err)
	}
	node, err = sim.NewNode(name, netip.MustParsePrefix(cidr), sim.WithCNIBin(cniBin), sim.WithPluginStderr(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if client, err = node.AddPod(ctx, "client"); err != nil {
		t.Fatal(err)
	}
	if server, err = node.AddPod(ctx, "server"); err != nil {
		t.Fatal(err)
	}
	return bin, node, client, server
}

func TestMonitorShowsDropsFiltered(t *testing.T) {
	bin, node, client, server := newMonitorNode(t, "mon", "10.217.0.0/24")
	hostVeth := client.Result.Interfaces[0].Name
	// An address the client's node never gave it: what it sends from there
	// is spoofed, and from_pod drops it.
	spoofed := netip.MustParseAddr("10.217.0.250")
	if err := client.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: spoofed.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	}); err != nil {
		t.Fatal(err)
	}
	sendSpoofed := func() {
		t.Helper()
		if err := client.Do(func() error {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: spoofed.AsSlice(), Port: 9999}, &net.UDPAddr{IP: server.IP.AsSlice(), Port: 7777})
			if err != nil {
				return err
			}
			defer c.Close()
			for range 3 {
				if _, err := c.Write([]byte("spoofed")); err != nil {
					return err
				}
			}
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: spoofed.AsSlice(), Port: 9998}, Timeout: 300 * time.Millisecond}
			if c, err := d.Dial("tcp4", netip.AddrPortFrom(server.IP, 80).String()); err == nil {
				c.Close()
				return fmt.Errorf("a connection from a spoofed address was accepted")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	// UDP to port 7777 only, as JSON.
	m := startMonitor(t, bin, node, "-o", "json", "--proto", "udp", "--port", "7777")
	sendSpoofed()
	lines := m.stop(t)
	if len(lines) < 3 {
		t.Fatalf("monitor --proto udp --port 7777 printed %d lines, want at least the 3 spoofed datagrams:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, l := range lines {
		var e event
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("monitor -o json printed %q: %v", l, err)
		}
		want := event{Type: "drop", Reason: "drop_spoofed_ip", Hook: "from_pod", Device: hostVeth, Pod: client.IP.String(), Proto: "udp",
			Src: spoofed.String(), Dst: server.IP.String(), SrcPort: 9999, DstPort: 7777, Len: e.Len}
		if e != want || e.Len < 14+20+8+7 {
			t.Fatalf("event %+v, want %+v", e, want)
		}
	}
	t.Logf("udp: %s", lines[0])

	// The client pod's TCP only (the pod named by its host-side device),
	// as text; a second monitor is refused meanwhile.
	m = startMonitor(t, bin, node, "--pod", hostVeth, "--proto", "tcp")
	out, err := exec.Command(bin, "--pin-root", node.PinRoot, "monitor").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another podpath monitor is reading the events") {
		t.Errorf("a second monitor: %v\n%s\nwant it refused", err, out)
	}
	sendSpoofed()
	lines = m.stop(t)
	wantTCP := "drop drop_spoofed_ip from_pod"
	wantTuple := fmt.Sprintf("tcp %s:9998 -> %s:80", spoofed, server.IP)
	if len(lines) == 0 {
		t.Fatal("monitor --pod --proto tcp printed nothing; want the spoofed SYNs")
	}
	for _, l := range lines {
		if !strings.Contains(l, wantTCP) || !strings.Contains(l, wantTuple) || !strings.Contains(l, hostVeth+" (pod "+client.IP.String()+")") {
			t.Fatalf("monitor --pod --proto tcp printed %q, want only %q ... %q lines", l, wantTCP, wantTuple)
		}
	}
	t.Logf("tcp: %s", lines[0])

	// Another pod's events: none of these.
	m = startMonitor(t, bin, node, "--pod", server.IP.String(), "--type", "drop", "--reason", "drop_spoofed_mac")
	sendSpoofed()
	if lines := m.stop(t); len(lines) != 0 {
		t.Fatalf("monitor --pod server --reason drop_spoofed_mac printed %q, want nothing", lines)
	}

	// What became of the events, and what the counters say.
	out, err = exec.Command(bin, "--pin-root", node.PinRoot, "monitor", "--stats", "-o", "json").CombinedOutput()
	var st maps.EventStats
	if err != nil || json.Unmarshal(out, &st) != nil || st.Sent < 3*4 || st.RateLimited != 0 || st.RingbufFull != 0 {
		t.Fatalf("monitor --stats: %v %+v\n%s", err, st, out)
	}

	// podpath status: the drops among the top reasons, the events.
	var sum struct {
		Loaded   bool
		Attached map[string]int
		TopDrops []struct {
			Hook, Reason string
			Packets      uint64
		}
		Events maps.EventStats
	}
	// In the node's network namespace, as on a node: tc attachments
	// without bpf_link (kernels before tcx) are found on its devices.
	status := func(args ...string) (out []byte, err error) {
		cmd := exec.Command(bin, append([]string{"--pin-root", node.PinRoot, "--state-dir", node.StateDir, "status"}, args...)...)
		node.Do(func() error { out, err = cmd.CombinedOutput(); return nil })
		return out, err
	}
	out, err = status("-o", "json")
	if err != nil || json.Unmarshal(out, &sum) != nil || !sum.Loaded || sum.Attached["from_pod"] != 2 || len(sum.TopDrops) == 0 ||
		sum.TopDrops[0].Reason != "drop_spoofed_ip" || sum.TopDrops[0].Hook != "from_pod" || sum.TopDrops[0].Packets < 3*4 || sum.Events != st {
		t.Fatalf("status -o json: %v %+v\n%s\nwant from_pod on 2 pods, drop_spoofed_ip at from_pod on top, events %+v", err, sum, out, st)
	}
	out, err = status()
	if err != nil || !strings.Contains(string(out), "drop_spoofed_ip at from_pod") || !strings.Contains(string(out), "Drop events:") {
		t.Fatalf("status: %v\n%s", err, out)
	}
	t.Logf("podpath status:\n%s", out)

	for _, bad := range [][]string{{"--proto", "sctp"}, {"--addr", "10.1"}, {"--pod", "no-such-pod"}, {"--reason", "drop_nonsense"}, {"--port", "70000"}} {
		out, err := exec.Command(bin, append([]string{"--pin-root", node.PinRoot, "monitor"}, bad...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), bad[0]) {
			t.Errorf("monitor %v: %v\n%s\nwant an error naming %s", bad, err, out, bad[0])
		}
	}
}

// monitor --trace switches tracing on for one pod while it runs: each
// hook's verdict on that pod's packets streams as a trace event, with the
// packet as it arrived and as it left (a ClusterIP connection's request
// translated to the backend, its reply back to the frontend), and
// tracing is off again once the monitor exits.
func TestMonitorTrace(t *testing.T) {
	bin, node, client, server := newMonitorNode(t, "mtr", "10.218.0.0/24")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ln, err := sim.ServeTCP(server.Do, netip.AddrPortFrom(server.IP, 8080).String(), func(net.Conn) string { return "hello" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	svcs, err := services.Open(node.PinRoot, node.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svcs.Close() })
	vip := netip.MustParseAddr("10.96.218.1")
	if _, err := svcs.Upsert(ctx, services.Service{Namespace: "mon", Name: "web", ClusterIP: vip,
		Ports:    []services.Port{{Name: "http", Port: 80, TargetPort: 8080}},
		Backends: []services.Backend{{IP: server.IP, Ready: true, Local: true}}}); err != nil {
		t.Fatal(err)
	}

	m := startMonitor(t, bin, node, "-o", "json", "--trace", client.IP.String(), "--type", "trace")
	if cfg, err := maps.ReadEventConfig(node.PinRoot); err != nil || !maps.TraceOf(cfg).On() {
		t.Fatalf("while monitor --trace runs: config %+v (%v), want tracing on", cfg, err)
	}
	if got, err := sim.FetchTCP(client.Do, netip.AddrPortFrom(vip, 80).String(), 5*time.Second); err != nil || got != "hello" {
		t.Fatalf("client to the ClusterIP: %q, %v", got, err)
	}
	lines := m.stop(t)
	type traced struct {
		event
		OrigSrc, OrigDst string
	}
	var request, reply bool
	for _, l := range lines {
		var e traced
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("monitor -o json printed %q: %v", l, err)
		}
		if e.Type != "trace" || e.Reason == "" || e.Proto != "tcp" {
			t.Errorf("monitor --trace --type trace printed %q", l)
		}
		switch {
		case e.Hook == "from_pod" && e.Src == client.IP.String() && e.Dst == server.IP.String() && e.DstPort == 8080 &&
			e.OrigDst == netip.AddrPortFrom(vip, 80).String():
			request = true
		case e.Hook == "from_pod" && e.Src == vip.String() && e.SrcPort == 80 && e.Dst == client.IP.String() &&
			e.OrigSrc == netip.AddrPortFrom(server.IP, 8080).String():
			reply = true
		}
	}
	if !request || !reply {
		t.Fatalf("monitor --trace %s printed (request seen %v, reply seen %v):\n%s\nwant the request translated to %s:8080 and the reply back from %s:80",
			client.IP, request, reply, strings.Join(lines, "\n"), server.IP, vip)
	}
	t.Logf("trace: %s", lines[0])
	if cfg, err := maps.ReadEventConfig(node.PinRoot); err != nil || maps.TraceOf(cfg).On() {
		t.Errorf("after monitor --trace exited: config %+v (%v), want tracing off", cfg, err)
	}
	st, err := maps.ReadTraceStats(node.PinRoot)
	if err != nil || st.Sent < 4 || st.Sent != st.Matched {
		t.Errorf("trace state %+v (%v): want every selected packet sent", st, err)
	}
	var stats struct{ Trace maps.TraceStats }
	out, err := exec.Command(bin, "--pin-root", node.PinRoot, "monitor", "--stats", "-o", "json").CombinedOutput()
	if err != nil || json.Unmarshal(out, &stats) != nil || stats.Trace != st {
		t.Errorf("monitor --stats: %v %+v\n%s\nwant trace %+v", err, stats, out, st)
	}
	out, err = exec.Command(bin, "--pin-root", node.PinRoot, "monitor", "--trace", "no-such-pod").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--trace") {
		t.Errorf("monitor --trace no-such-pod: %v\n%s\nwant an error naming --trace", err, out)
	}
}
