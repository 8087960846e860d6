package ctrtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"golang.org/x/sys/unix"
)

// Containerd is a containerd daemon private to one test: its own config,
// root, state, socket and cgroup parent, all under Dir, running inside the
// node's netns.
type Containerd struct {
	Dir  string
	Sock string // the CRI's (and ctr's) socket
	// Log is the daemon's output.
	Log string
	// CgroupParent is where pods of a CRI client that names no parent of
	// its own should go; teardown removes it.
	CgroupParent string
	// Exited is closed when the daemon has exited.
	Exited chan struct{}

	ctr string
	cmd *exec.Cmd
}

// Options say where a containerd runs and where it finds the network.
type Options struct {
	// NetNS is the path of the node's network namespace.
	NetNS string
	// MountNS is the path of a mount namespace to run in (shared with a
	// kubelet, which mounts the pods' volumes that runc then binds); empty:
	// one of the daemon's own.
	MountNS string
	// BinDir and ConfDir are the CNI plugin and configuration directories.
	BinDir, ConfDir string
}

// containerdConfig is the daemon's configuration (version 2, as containerd
// 1.6 and 1.7 read it). The settings that matter on this kind of host:
//   - restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE; without it
//     every sandbox fails with "can't get final child's PID from pipe: EOF".
//   - netns_mounts_under_state_dir: pod netns live under the daemon's state,
//     so a failed pod cannot leak one into /run/netns.
//   - cni bin_dir and conf_dir: the node's own, never the host's; runc's
//     Root likewise (its default is /run/containerd/runc).
var containerdConfig = template.Must(template.New("config").Parse(`version = 2
root = "{{.Dir}}/root"
state = "{{.Dir}}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{{.Sock}}"

[ttrpc]
  address = "{{.Sock}}.ttrpc"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{{.Dir}}/opt"

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{{.SandboxImage}}"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    enable_selinux = false

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "{{.Dir}}/runc"

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{{.BinDir}}"
      conf_dir = "{{.ConfDir}}"
      max_conf_num = 1
`))

// Start starts containerd in the node's netns and in a mount namespace
// that is not the host's: its own, or o.MountNS. Its mounts (overlay roots,
// netns bind mounts, shm) vanish with the daemon, its shims and the
// namespace instead of piling up on the host. Teardown, at the end of the
// test, waits for its tasks to end, stops it by PID, ends its leftover
// shims, unmounts whatever is still mounted under its directory and removes
// CgroupParent.
func Start(t *testing.T, o Options) *Containerd {
	t.Helper()
	bin := RequireTool(t, "containerd")
	RequireTools(t, "runc", "containerd-shim-runc-v2", "unshare", "nsenter")
	cd := &Containerd{
		Dir:          t.TempDir(),
		ctr:          RequireTool(t, "ctr"),
		Exited:       make(chan struct{}),
		CgroupParent: fmt.Sprintf("/podpath-rt-%d", os.Getpid()),
	}
	cd.Sock = filepath.Join(cd.Dir, "containerd.sock")
	cd.Log = filepath.Join(cd.Dir, "containerd.log")

	var cfg bytes.Buffer
	err := containerdConfig.Execute(&cfg, map[string]string{
		"Dir":          cd.Dir,
		"Sock":         cd.Sock,
		"SandboxImage": PauseImage,
		"BinDir":       o.BinDir,
		"ConfDir":      o.ConfDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(cd.Dir, "config.toml")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(cd.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()

	// unshare and nsenter exec in place, so the PID is containerd's own.
	if o.MountNS != "" {
		cd.cmd = exec.Command("nsenter", "--mount="+o.MountNS, "--net="+o.NetNS, "--", bin, "--config", cfgPath)
	} else {
		cd.cmd = exec.Command("unshare", "--mount", "--propagation", "slave", "--",
			"nsenter", "--net="+o.NetNS, "--", bin, "--config", cfgPath)
	}
	cd.cmd.Stdout, cd.cmd.Stderr = logf, logf
	cd.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cd.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	go func() { cd.cmd.Wait(); close(cd.Exited) }()
	t.Cleanup(func() { cd.teardown(t) })
	return cd
}

// teardown stops the daemon and removes every trace of it. Pods must have
// been removed before, so the plugin saw their DELs.
func (cd *Containerd) teardown(t *testing.T) {
	if t.Failed() {
		t.Logf("containerd log (last lines):\n%s", Tail(cd.Log, 40))
	}
	cd.WaitNoTasks(t, 10*time.Second)
	cd.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-cd.Exited:
	case <-time.After(10 * time.Second):
		t.Errorf("containerd (pid %d) ignored SIGTERM for 10s; killing it", cd.cmd.Process.Pid)
		cd.cmd.Process.Kill()
		<-cd.Exited
	}
	for _, pid := range cd.shims() {
		t.Errorf("containerd shim %d outlived its daemon; killing it", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := unmountUnder(cd.Dir); err != nil {
		t.Errorf("unmount leftovers of containerd: %v", err)
	}
	if err := RemoveCgroups(cd.CgroupParent); err != nil {
		t.Errorf("remove cgroups under %s: %v", cd.CgroupParent, err)
	}
}

// Ctr runs ctr against this daemon in the CRI's namespace.
func (cd *Containerd) Ctr(args ...string) ([]byte, error) {
	cmd := exec.Command(cd.ctr, append([]string{"--address", cd.Sock, "--namespace", "k8s.io"}, args...)...)
	return cmd.CombinedOutput()
}

// ImportImages loads docker-save archives into the CRI's image store.
func (cd *Containerd) ImportImages(t testing.TB, archives []string) {
	t.Helper()
	for _, a := range archives {
		if out, err := cd.Ctr("images", "import", a); err != nil {
			t.Fatalf("ctr images import %s: %v\n%s", filepath.Base(a), err, out)
		}
	}
}

// WaitNoTasks waits until the daemon runs no task (container process).
func (cd *Containerd) WaitNoTasks(t testing.TB, timeout time.Duration) {
	var out []byte
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		select {
		case <-cd.Exited:
			return
		default:
		}
		var err error
		out, err = cd.Ctr("tasks", "list", "--quiet")
		if err == nil && len(bytes.TrimSpace(out)) == 0 {
			return
		}
	}
	t.Errorf("containerd still runs tasks after %v:\n%s", timeout, out)
}

// shims lists the PIDs of shims serving this daemon; each carries the
// daemon's socket address on its command line.
func (cd *Containerd) shims() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "containerd-shim-runc-v2" {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == cd.Sock {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// unmountUnder detaches every mount at or below dir in this mount
// namespace, deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := unescapeMountPath(fields[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// RemoveCgroups removes the cgroup parent the pods ran under from every
// hierarchy (cgroup v1 has one per controller, v2 a single one). runc
// removes the pods' own cgroups; the parent it created stays behind.
func RemoveCgroups(parent string) error {
	var roots []string
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		roots = []string{"/sys/fs/cgroup"}
	} else {
		entries, _ := os.ReadDir("/sys/fs/cgroup")
		for _, e := range entries {
			roots = append(roots, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	var errs []error
	for _, root := range roots {
		top := filepath.Join(root, parent)
		var dirs []string
		filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Tail returns the last n lines of a file, for failure reports.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitServing waits until the daemon answers on its socket.
func (cd *Containerd) WaitServing(t testing.TB, timeout time.Duration) {
	t.Helper()
	var out []byte
	var err error
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		select {
		case <-cd.Exited:
			t.Fatalf("containerd exited during start-up:\n%s", Tail(cd.Log, 30))
		default:
		}
		if out, err = cd.Ctr("version"); err == nil {
			return
		}
	}
	t.Fatalf("containerd not serving after %v: %v\n%s\n%s", timeout, err, out, Tail(cd.Log, 30))
}

// TaskPID is the PID of the running task (a container's first process) of
// container id, as `ctr tasks list` shows it.
func (cd *Containerd) TaskPID(id string) (int, error) {
	out, err := cd.Ctr("tasks", "list")
	if err != nil {
		return 0, fmt.Errorf("ctr tasks list: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == id && f[2] == "RUNNING" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no running task %s:\n%s", id, out)
}
