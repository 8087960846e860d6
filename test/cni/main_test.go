// Package cni_test drives the real podpath-cni binary end to end: nodes and
// pods are network namespaces on this machine (internal/sim), the plugin is
// invoked through libcni or, for malformed input, directly, and traffic only
// ever flows between namespaces the tests made.
package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
)

// cniBin is the plugin directory built once for every test.
var cniBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the CNI end-to-end tests need root (network namespaces, BPF): run them as root")
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "podpath-cni-test-bin-")
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

// Every test node gets a name unique to the test and its own pod CIDR; the
// CIDRs are only ever used inside the tests' namespaces.
func newNode(t *testing.T, name, cidr string, opts ...sim.Option) *sim.Node {
	t.Helper()
	opts = append([]sim.Option{sim.WithCNIBin(cniBin)}, opts...)
	n, err := sim.NewNode(name, netip.MustParsePrefix(cidr), opts...)
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node %s: %v", name, err)
		}
	})
	return n
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func addPod(t *testing.T, n *sim.Node, name string) *sim.Pod {
	t.Helper()
	p, err := n.AddPod(testContext(t), name)
	if err != nil {
		t.Fatalf("add pod %s: %v", name, err)
	}
	return p
}

// counters sums the node's counters of one hook by reason name.
func counters(t *testing.T, n *sim.Node) map[string]uint64 {
	t.Helper()
	cs, err := n.Counters()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, c := range cs {
		if c.Hook.String() == maps.ProgFromPod {
			out[c.Reason.String()] += c.Packets
		}
	}
	return out
}

func endpoints(t *testing.T, n *sim.Node) []maps.Endpoint {
	t.Helper()
	eps, err := maps.OpenEndpoints(n.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer eps.Close()
	all, err := eps.List()
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// allocations lists the address files of the node's network.
func allocations(t *testing.T, n *sim.Node) []string {
	t.Helper()
	entries, err := os.ReadDir(cni.IPAMDir(n.StateDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// hostVeths lists the podpath veths in the node's namespace.
func hostVeths(t *testing.T, n *sim.Node) []string {
	t.Helper()
	var out []string
	err := n.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, "pp") {
				out = append(out, l.Attrs().Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// attachedVeths lists, as "<program>@<direction>@<device>", every program
// podpath has attached in the node's namespace, whichever mechanism carries
// it: pinned tcx links, or cls_bpf filters on kernels without tcx. Each one
// must use the mechanism the loader's probe picks on this kernel, so on a
// kernel without tcx the test also checks that the plugin fell back to
// legacy tc.
// nodeAttachments lists the programs attached in the node's namespace.
func nodeAttachments(t *testing.T, n *sim.Node) []loader.Attachment {
	t.Helper()
	var atts []loader.Attachment
	if err := n.Do(func() (err error) {
		atts, err = loader.Attachments(n.PinRoot)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return atts
}

func attachedVeths(t *testing.T, n *sim.Node) []string {
	t.Helper()
	f, err := loader.Probe()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range nodeAttachments(t, n) {
		if a.Mode != f.TCMechanism() {
			t.Errorf("%s on %s attached with %q, want %q on kernel %s", a.Program, a.Ifname, a.Mode, f.TCMechanism(), f.Kernel)
		}
		out = append(out, fmt.Sprintf("%s@%s@%s", a.Program, a.Direction, a.Ifname))
	}
	slices.Sort(out)
	return out
}

// pluginCall is one direct invocation of the plugin binary, for the input a
// well-behaved runtime would never send, or when the test must control the
// process (hold it, kill it).
type pluginCall struct {
	Command, ContainerID, Netns, IfName, Args string
	Stdin                                     []byte
	// Unset lists environment variables to leave out; Env adds some.
	Unset []string
	Env   []string
}

// run execs the plugin in the node's namespace and returns its stdout, or
// the CNI error it printed.
func (c pluginCall) run(t *testing.T, n *sim.Node) ([]byte, *types.Error) {
	t.Helper()
	p, err := c.start(n)
	if err != nil {
		t.Fatal(err)
	}
	out, cerr, err := p.wait()
	if err != nil {
		t.Fatal(err)
	}
	return out, cerr
}

// plugin is a running plugin process.
type plugin struct {
	command string
	cmd     *exec.Cmd
	stdout  bytes.Buffer
	stderr  pluginLog
	exited  chan struct{} // closed once it has exited and runErr is set
	runErr  error
}

// start execs the plugin in the node's namespace.
func (c pluginCall) start(n *sim.Node) (*plugin, error) {
	env := map[string]string{
		"CNI_COMMAND":     c.Command,
		"CNI_CONTAINERID": c.ContainerID,
		"CNI_NETNS":       c.Netns,
		"CNI_IFNAME":      c.IfName,
		"CNI_ARGS":        c.Args,
		"CNI_PATH":        cniBin,
	}
	for _, k := range c.Unset {
		delete(env, k)
	}
	p := &plugin{
		command: c.Command,
		cmd:     exec.Command(filepath.Join(cniBin, sim.PluginType)),
		stderr:  pluginLog{paused: make(chan struct{})},
		exited:  make(chan struct{}),
	}
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, c.Env...)
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdin = bytes.NewReader(c.Stdin)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	// The child is forked from the thread Do moved into the node.
	if err := n.Do(p.cmd.Start); err != nil {
		return nil, err
	}
	go func() {
		p.runErr = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// wait returns the plugin's stdout once it exits, or the CNI error it
// printed; err when it printed none (killed, crashed).
func (p *plugin) wait() ([]byte, *types.Error, error) {
	<-p.exited
	if p.runErr == nil {
		return p.stdout.Bytes(), nil, nil
	}
	var e types.Error
	if err := json.Unmarshal(p.stdout.Bytes(), &e); err != nil || e.Code == 0 {
		return nil, nil, fmt.Errorf("plugin %s failed without a CNI error: %w\nstdout: %s\nstderr: %s", p.command, p.runErr, p.stdout.String(), p.stderr.String())
	}
	return p.stdout.Bytes(), &e, nil
}

// paused waits until the plugin holds at the step cni.PauseEnv names; it
// fails if the plugin exits first.
func (p *plugin) paused() error {
	select {
	case <-p.stderr.paused:
		return nil
	case <-p.exited:
		_, cerr, err := p.wait()
		return fmt.Errorf("plugin %s exited before its pause: %v %v", p.command, cerr, err)
	}
}

// resume lets a paused plugin go on.
func (p *plugin) resume() error { return p.cmd.Process.Signal(syscall.SIGCONT) }

// kill kills the plugin (SIGKILL), if it still runs, and waits for it.
func (p *plugin) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

// pluginLog keeps a plugin's stderr and closes paused when the plugin logs
// that it holds at cni.PauseEnv's step.
type pluginLog struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	paused chan struct{}
}

func (l *pluginLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := bytes.Contains(l.buf.Bytes(), []byte("msg=paused"))
	l.buf.Write(b)
	if !seen && bytes.Contains(l.buf.Bytes(), []byte("msg=paused")) {
		close(l.paused)
	}
	return len(b), nil
}

func (l *pluginLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// pluginConf is the node's plugin configuration as libcni hands it to the
// plugin, with fields overridden (a nil value removes the field).
func pluginConf(t *testing.T, n *sim.Node, override map[string]any) []byte {
	t.Helper()
	var conf map[string]any
	if err := json.Unmarshal(n.NetworkList().Plugins[0].Bytes, &conf); err != nil {
		t.Fatal(err)
	}
	conf["name"] = n.NetName
	conf["cniVersion"] = n.NetworkList().CNIVersion
	for k, v := range override {
		if v == nil {
			delete(conf, k)
		} else {
			conf[k] = v
		}
	}
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cniCode returns the CNI error code in err, or 0.
func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}
