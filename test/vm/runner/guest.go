package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// guestFlag makes the runner the guest's init; stage1 passes it.
const guestFlag = "-guest-init"

// guestSpec is what the host asks the guest to run.
type guestSpec struct {
	Args       []string `json:"args"`
	Env        []string `json:"env"`
	Dir        string   `json:"dir"`
	Release    string   `json:"release"`    // guest kernel's uname -r
	ModulesDir string   `json:"modulesDir"` // its /lib/modules/RELEASE on the host
	Busybox    string   `json:"busybox"`    // static busybox on the host, for modprobe
	Shares     []share  `json:"shares"`
}

// share is a host directory shared read-write over 9p at the same path.
type share struct {
	Tag  string `json:"tag"`
	Path string `json:"path"`
}

// guestMain runs as PID 1 on the guest's root. It never returns on success:
// it powers the guest off after writing the exit code to its port.
func guestMain(specPath string) int {
	err := guestRun(specPath)
	// Reached only when setup failed: say why on the console, whose tail
	// the host prints when no exit code came back.
	fmt.Fprintf(os.Stderr, "podpath-vm guest: %v\n", err)
	powerOff()
	return exitVMFailed
}

func guestRun(specPath string) error {
	if err := mountGuestFS(); err != nil {
		return err
	}
	// Every SysRq function: the host asks for stacks when the guest hangs.
	os.WriteFile("/proc/sys/kernel/sysrq", []byte("1\n"), 0o644)
	b, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var spec guestSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("%s: %w", specPath, err)
	}
	if err := setupModules(spec); err != nil {
		return err
	}
	if err := loopbackUp(); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	unix.Sethostname([]byte("podpath-vm"))
	for _, s := range spec.Shares {
		opts := "trans=virtio,version=9p2000.L,cache=mmap,msize=512000"
		if err := unix.Mount(s.Tag, s.Path, "9p", 0, opts); err != nil {
			return fmt.Errorf("mount %s at %s: %w", s.Tag, s.Path, err)
		}
	}

	ports, err := openPorts(portStdout, portStderr, portExit)
	if err != nil {
		return err
	}
	fmt.Fprintf(ports[portExit], "started\n")
	code := runCommand(spec, ports[portStdout], ports[portStderr])
	// A blocking write to a virtio port returns once the host has taken the
	// data, so nothing is lost to the power-off below.
	fmt.Fprintf(ports[portExit], "exit %d\n", code)
	for _, f := range ports {
		f.Close()
	}
	powerOff()
	return nil
}

func runCommand(spec guestSpec, stdout, stderr *os.File) int {
	if len(spec.Args) == 0 {
		fmt.Fprintln(stderr, "podpath-vm guest: no command")
		return exitVMFailed
	}
	path := spec.Args[0]
	if !strings.Contains(path, "/") {
		// Resolve against the caller's PATH, not ours.
		for _, dir := range filepath.SplitList(envValue(spec.Env, "PATH")) {
			if p := filepath.Join(dir, path); isExecutable(p) {
				path = p
				break
			}
		}
	}
	cmd := exec.Command(path, spec.Args[1:]...)
	cmd.Args[0] = spec.Args[0]
	cmd.Env, cmd.Dir = spec.Env, spec.Dir
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return exit.ExitCode()
	default:
		fmt.Fprintf(stderr, "podpath-vm guest: %v\n", err)
		return 127
	}
}

func envValue(env []string, name string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// mountGuestFS mounts what a container host has: /run on tmpfs with
// /run/netns for `ip netns`, bpffs for the datapath's pins.
func mountGuestFS() error {
	for _, m := range []struct{ source, target, fstype, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", ""},
		{"devpts", "/dev/pts", "devpts", "newinstance,ptmxmode=0666,mode=0620"},
		{"tmpfs", "/dev/shm", "tmpfs", "mode=1777"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"bpf", "/sys/fs/bpf", "bpf", "mode=0700"},
		{"debugfs", "/sys/kernel/debug", "debugfs", ""},
		{"tracefs", "/sys/kernel/tracing", "tracefs", ""},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", ""},
	} {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.source, m.target, m.fstype, 0, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	if err := os.MkdirAll("/run/lock", 0o1777); err != nil {
		return err
	}
	// /run/netns as `ip netns add` leaves it: a shared mount point of its
	// own, before any test binary races to make it one.
	if err := os.MkdirAll("/run/netns", 0o755); err != nil {
		return err
	}
	if err := unix.Mount("/run/netns", "/run/netns", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind /run/netns: %w", err)
	}
	return unix.Mount("", "/run/netns", "", unix.MS_SHARED, "")
}

// setupModules puts the guest kernel's modules where modprobe looks and
// makes the kernel call busybox modprobe to autoload them.
func setupModules(spec guestSpec) error {
	target := filepath.Join("/lib/modules", spec.Release)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(spec.ModulesDir, target, "", unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", spec.ModulesDir, target, err)
	}
	// The kernel runs its modprobe with argv[0] set to this path, and
	// busybox picks the applet from argv[0]'s base name.
	dir := "/run/podpath-vm"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	modprobe := filepath.Join(dir, "modprobe")
	if err := os.Symlink(spec.Busybox, modprobe); err != nil {
		return err
	}
	return os.WriteFile("/proc/sys/kernel/modprobe", []byte(modprobe+"\n"), 0o644)
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// openPorts opens the named virtio-serial ports for writing, waiting a
// little for the driver to announce them. The files are blocking on purpose
// (see guestRun).
func openPorts(names ...string) (map[string]*os.File, error) {
	ports := map[string]*os.File{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, _ := os.ReadDir("/sys/class/virtio-ports")
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join("/sys/class/virtio-ports", e.Name(), "name"))
			if err != nil {
				continue
			}
			name := strings.TrimSpace(string(b))
			if _, done := ports[name]; done {
				continue
			}
			fd, err := unix.Open(filepath.Join("/dev", e.Name()), unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			ports[name] = os.NewFile(uintptr(fd), name)
		}
		missing := 0
		for _, n := range names {
			if ports[n] == nil {
				missing++
			}
		}
		if missing == 0 {
			return ports, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("virtio ports %v did not appear (have %d)", names, len(ports))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func powerOff() {
	unix.Sync()
	// qemu runs with -no-reboot, so a reboot ends it; that needs no ACPI.
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	// Not reached unless reboot failed; PID 1 exiting panics the kernel,
	// and panic=-1 ends qemu as well.
	os.Exit(exitVMFailed)
}
