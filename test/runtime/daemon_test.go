package runtimetest

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

// containerd is a containerd daemon private to one test: its own config,
// root, state, socket and cgroup parent, all under dir, running inside the
// node's netns.
type containerd struct {
	dir          string
	sock         string
	ctr          string
	cmd          *exec.Cmd
	exited       chan struct{}
	logPath      string
	cgroupParent string
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

// startContainerd starts containerd in the node's netns and in a mount
// namespace of its own, whose mounts (overlay roots, netns bind mounts, shm)
// vanish with the daemon and its shims instead of piling up on the host.
// Teardown stops it by PID, ends its leftover shims, unmounts whatever is
// still mounted under its directory and removes its cgroups.
func startContainerd(t *testing.T, n *node) *containerd {
	t.Helper()
	bin := requireTool(t, "containerd")
	requireTool(t, "runc")
	requireTool(t, "containerd-shim-runc-v2")
	requireTool(t, "unshare")
	cd := &containerd{
		dir:          t.TempDir(),
		ctr:          requireTool(t, "ctr"),
		exited:       make(chan struct{}),
		cgroupParent: fmt.Sprintf("/podpath-rt-%d", os.Getpid()),
	}
	cd.sock = filepath.Join(cd.dir, "containerd.sock")
	cd.logPath = filepath.Join(cd.dir, "containerd.log")

	var cfg bytes.Buffer
	err := containerdConfig.Execute(&cfg, map[string]string{
		"Dir":          cd.dir,
		"Sock":         cd.sock,
		"SandboxImage": pauseImage,
		"BinDir":       n.binDir,
		"ConfDir":      n.confDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(cd.dir, "config.toml")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(cd.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()

	// unshare and nsenter exec in place, so the PID is containerd's own.
	cd.cmd = exec.Command("unshare", "--mount", "--propagation", "slave", "--",
		"nsenter", "--net="+n.netns, "--", bin, "--config", cfgPath)
	cd.cmd.Stdout, cd.cmd.Stderr = logf, logf
	cd.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cd.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	go func() { cd.cmd.Wait(); close(cd.exited) }()
	t.Cleanup(func() { cd.teardown(t) })
	return cd
}

// teardown stops the daemon and removes every trace of it. Pods must have
// been removed before, so the plugin saw their DELs.
func (cd *containerd) teardown(t *testing.T) {
	if t.Failed() {
		t.Logf("containerd log (last lines):\n%s", tail(cd.logPath, 40))
	}
	cd.waitNoTasks(t, 10*time.Second)
	cd.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-cd.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("containerd (pid %d) ignored SIGTERM for 10s; killing it", cd.cmd.Process.Pid)
		cd.cmd.Process.Kill()
		<-cd.exited
	}
	for _, pid := range cd.shims() {
		t.Errorf("containerd shim %d outlived its daemon; killing it", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := unmountUnder(cd.dir); err != nil {
		t.Errorf("unmount leftovers of containerd: %v", err)
	}
	if err := removeCgroups(cd.cgroupParent); err != nil {
		t.Errorf("remove cgroups under %s: %v", cd.cgroupParent, err)
	}
}

// ctrCmd runs ctr against this daemon in the CRI's namespace.
func (cd *containerd) ctrCmd(args ...string) ([]byte, error) {
	cmd := exec.Command(cd.ctr, append([]string{"--address", cd.sock, "--namespace", "k8s.io"}, args...)...)
	return cmd.CombinedOutput()
}

// importImages loads docker-save archives into the CRI's image store.
func (cd *containerd) importImages(t testing.TB, archives []string) {
	t.Helper()
	for _, a := range archives {
		if out, err := cd.ctrCmd("images", "import", a); err != nil {
			t.Fatalf("ctr images import %s: %v\n%s", filepath.Base(a), err, out)
		}
	}
}

// waitNoTasks waits until the daemon runs no task (container process).
func (cd *containerd) waitNoTasks(t testing.TB, timeout time.Duration) {
	var out []byte
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		select {
		case <-cd.exited:
			return
		default:
		}
		var err error
		out, err = cd.ctrCmd("tasks", "list", "--quiet")
		if err == nil && len(bytes.TrimSpace(out)) == 0 {
			return
		}
	}
	t.Errorf("containerd still runs tasks after %v:\n%s", timeout, out)
}

// shims lists the PIDs of shims serving this daemon; each carries the
// daemon's socket address on its command line.
func (cd *containerd) shims() []int {
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
			if args[i] == "-address" && args[i+1] == cd.sock {
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

// removeCgroups removes the cgroup parent the pods ran under from every
// hierarchy (cgroup v1 has one per controller, v2 a single one). runc
// removes the pods' own cgroups; the parent it created stays behind.
func removeCgroups(parent string) error {
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

// tail returns the last n lines of a file, for failure reports.
func tail(path string, n int) string {
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
