package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Names of the virtio-serial ports, as the guest finds them in sysfs.
const (
	portStdout = "podpath.stdout"
	portStderr = "podpath.stderr"
	portExit   = "podpath.exit"
)

type vmConfig struct {
	Kernel  Kernel
	CPUs    int
	MemMiB  int
	Accel   string
	Verbose bool
	Append  string // more kernel command line
	// BootTimeout bounds the time from starting qemu to the command
	// starting in the guest.
	BootTimeout time.Duration
	RW          []string
	Spec        guestSpec
	// ConsolePath keeps the guest's console log there (it is otherwise
	// kept only for the run).
	ConsolePath string
	// A guest is taken as hung when nothing under StallDir has been
	// written for StallAfter (zero: never): the runner asks its kernel for
	// the blocked tasks' and the CPUs' stacks, which go to the console, and
	// stops it.
	StallDir   string
	StallAfter time.Duration
}

// runVM boots the kernel, runs cfg.Spec in it and returns its exit code. An
// error means the guest never reported one.
func runVM(ctx context.Context, cfg vmConfig) (int, error) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return 0, errors.New("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
	}
	runDir, err := os.MkdirTemp("", "podpath-vm-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(runDir)

	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		return 0, err
	}
	busybox, err := findBusybox()
	if err != nil {
		return 0, err
	}
	initrd := filepath.Join(runDir, "initramfs.cpio")
	if err := writeInitramfs(initrd, cfg.Kernel); err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}

	spec := cfg.Spec
	spec.Release = cfg.Kernel.Release
	spec.ModulesDir = cfg.Kernel.ModulesDir()
	spec.Busybox = busybox
	var shareArgs []string
	for i, d := range cfg.RW {
		abs, err := filepath.Abs(d)
		if err != nil {
			return 0, err
		}
		if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
			return 0, fmt.Errorf("-rw %s: not a directory", d)
		}
		tag := fmt.Sprintf("rw%d", i)
		spec.Shares = append(spec.Shares, share{Tag: tag, Path: abs})
		shareArgs = append(shareArgs,
			"-fsdev", fmt.Sprintf("local,id=%s,path=%s,security_model=none,multidevs=remap", tag, qemuEscape(abs)),
			"-device", fmt.Sprintf("virtio-9p-pci,fsdev=%s,mount_tag=%s", tag, tag))
	}
	specPath := filepath.Join(runDir, "spec.json")
	b, err := json.Marshal(spec)
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(specPath, b, 0o644); err != nil {
		return 0, err
	}
	for _, p := range []string{self, specPath} {
		if strings.ContainsAny(p, " \t\n\"") {
			return 0, fmt.Errorf("path %q cannot go on a kernel command line", p)
		}
	}
	exitPath := filepath.Join(runDir, "exit")
	consolePath := filepath.Join(runDir, "console.log")
	if cfg.ConsolePath != "" {
		if consolePath, err = filepath.Abs(cfg.ConsolePath); err != nil {
			return 0, err
		}
		os.Remove(consolePath)
	}
	monitorPath := filepath.Join(runDir, "monitor.sock")

	// Output comes back through pipes: qemu writes the guest's ports into
	// them and we copy to our own stdout and stderr as it arrives.
	var (
		extra   []*os.File
		copiers sync.WaitGroup
	)
	pipeTo := func(dst io.Writer) (string, error) {
		r, w, err := os.Pipe()
		if err != nil {
			return "", err
		}
		extra = append(extra, w)
		set := len(extra) // ExtraFiles[i] is fd 3+i in qemu
		copiers.Add(1)
		go func() {
			defer copiers.Done()
			io.Copy(dst, r)
			r.Close()
		}()
		return fmt.Sprintf("-add-fd fd=%d,set=%d", 2+set, set), nil
	}
	var fdArgs []string
	var chardevs []string
	for _, p := range []struct {
		id  string
		dst io.Writer
	}{{"out", os.Stdout}, {"err", os.Stderr}} {
		a, err := pipeTo(p.dst)
		if err != nil {
			return 0, err
		}
		fdArgs = append(fdArgs, strings.Fields(a)...)
		chardevs = append(chardevs, fmt.Sprintf("file,id=%s,path=/dev/fdset/%d,append=on", p.id, len(extra)))
	}
	console := fmt.Sprintf("file,id=console,path=%s", qemuEscape(consolePath))
	if cfg.Verbose {
		a, err := pipeTo(os.Stderr)
		if err != nil {
			return 0, err
		}
		fdArgs = append(fdArgs, strings.Fields(a)...)
		console = fmt.Sprintf("file,id=console,path=/dev/fdset/%d,append=on", len(extra))
	}
	closeExtra := func() {
		for _, f := range extra {
			f.Close()
		}
		extra = nil
	}
	defer closeExtra()

	cmdline := []string{"console=ttyS0", "panic=-1", "rdinit=/init",
		// Expedited RCU grace periods change no semantics, and they make
		// tearing down network namespaces and veths, which the tests do
		// all the time, much faster on an emulated CPU.
		"rcupdate.rcu_expedited=1",
		"podpath.init=" + self, "podpath.spec=" + specPath}
	if !cfg.Verbose {
		cmdline = append(cmdline, "quiet")
	}
	cmdline = append(cmdline, strings.Fields(cfg.Append)...)
	args := []string{
		"-M", "pc", "-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.MemMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
	}
	args = append(args, accelArgs(cfg.Accel)...)
	args = append(args,
		"-kernel", cfg.Kernel.ImagePath(), "-initrd", initrd,
		"-append", strings.Join(cmdline, " "),
		"-chardev", console, "-serial", "chardev:console",
		"-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
		"-device", "virtio-serial-pci,id=ports",
		"-chardev", chardevs[0], "-device", "virtserialport,bus=ports.0,nr=1,chardev=out,name="+portStdout,
		"-chardev", chardevs[1], "-device", "virtserialport,bus=ports.0,nr=2,chardev=err,name="+portStderr,
		"-chardev", "file,id=exit,path="+qemuEscape(exitPath),
		"-device", "virtserialport,bus=ports.0,nr=3,chardev=exit,name="+portExit,
		"-monitor", "unix:"+qemuEscape(monitorPath)+",server=on,wait=off",
	)
	args = append(args, shareArgs...)
	args = append(args, fdArgs...)

	cmd := exec.Command(qemu, args...)
	cmd.ExtraFiles = extra
	var qemuErr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qemuErr, &qemuErr
	// qemu dies with us, however we die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start qemu: %w", err)
	}
	closeExtra() // qemu holds the write ends now; EOF comes when it exits

	// The VM is stopped when ctx ends, when the command has not started in
	// time (a guest that hangs while booting would otherwise hang us for
	// good) and when the guest stalls.
	var stopReason error
	exited := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		boot := time.NewTimer(cfg.BootTimeout)
		defer boot.Stop()
		tick := time.NewTicker(10 * time.Second)
		defer tick.Stop()
		var started time.Time // when the command was first seen running
		for {
			select {
			case <-exited:
				return
			case <-ctx.Done():
				stopReason = ctx.Err()
			case <-boot.C:
				if guestStarted(exitPath) {
					continue
				}
				stopReason = fmt.Errorf("the guest did not start the command within %s", cfg.BootTimeout)
			case <-tick.C:
				if cfg.StallAfter == 0 || !guestStarted(exitPath) {
					continue
				}
				if started.IsZero() {
					started = time.Now()
				}
				last := lastWrite(cfg.StallDir)
				if last.Before(started) {
					last = started
				}
				if time.Since(last) < cfg.StallAfter {
					continue
				}
				stopReason = fmt.Errorf("the guest stalled: nothing written under %s since %s", cfg.StallDir, last.Format(time.TimeOnly))
			}
			if guestStarted(exitPath) {
				dumpGuestStacks(monitorPath)
			}
			cmd.Process.Kill()
			return
		}
	}()
	waitErr := cmd.Wait()
	close(exited)
	<-watched
	copiers.Wait()

	code, ok := readExitCode(exitPath)
	if ok {
		return code, nil
	}
	os.Stderr.Write(qemuErr.Bytes())
	if !cfg.Verbose {
		printTail(os.Stderr, consolePath, 40)
		if cfg.ConsolePath != "" {
			fmt.Fprintf(os.Stderr, "vm runner: the whole console log: %s\n", consolePath)
		}
	}
	if stopReason != nil {
		return 0, stopReason
	}
	if waitErr != nil {
		return 0, fmt.Errorf("qemu: %w; the guest reported no exit code", waitErr)
	}
	return 0, errors.New("the guest powered off without reporting an exit code")
}

// accelArgs picks KVM where it really works (kvm_intel or kvm_amd loaded and
// /dev/kvm usable: a nested kvm_pvm, for one, runs only special guests) and
// TCG otherwise.
//
// Under TCG the CPU has every feature qemu emulates except ERMS and FSRM:
// with them the kernel's and Go's memcpy and memset become `rep movsb` and
// `rep stosb`, which TCG runs a byte at a time. Without them the BPF
// verifier, which copies its state all the time, runs about twice as fast.
func accelArgs(want string) []string {
	tcg := []string{"-accel", "tcg,thread=multi", "-cpu", "max,erms=off,fsrm=off"}
	kvm := []string{"-accel", "kvm", "-cpu", "host"}
	switch want {
	case "kvm":
		return kvm
	case "tcg":
		return tcg
	}
	if !fileExists("/sys/module/kvm_intel") && !fileExists("/sys/module/kvm_amd") {
		return tcg
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return tcg
	}
	f.Close()
	return kvm
}

// qemuEscape doubles commas, qemu's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// The guest writes "started" to its exit port when the command starts and
// "exit N" when it ends.
func guestStarted(path string) bool {
	b, _ := os.ReadFile(path)
	return strings.HasPrefix(string(b), "started\n")
}

func readExitCode(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "exit "); ok {
			code, err := strconv.Atoi(v)
			return code, err == nil
		}
	}
	return 0, false
}

func printTail(w io.Writer, path string, lines int) {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	fmt.Fprintf(w, "vm runner: guest console (last %d lines):\n", len(ls))
	for _, l := range ls {
		fmt.Fprintf(w, "  %s\n", strings.TrimRight(l, "\r"))
	}
}

// lastWrite is the latest modification time of dir or anything under it.
func lastWrite(dir string) time.Time {
	var last time.Time
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := d.Info(); err == nil && fi.ModTime().After(last) {
			last = fi.ModTime()
		}
		return nil
	})
	return last
}

// dumpGuestStacks asks the guest kernel, through qemu's monitor and the
// magic SysRq key, for the stacks of its blocked tasks (w) and of every
// CPU (l). They go to the console log: what a hung guest was doing.
func dumpGuestStacks(monitorPath string) {
	c, err := net.DialTimeout("unix", monitorPath, 2*time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	go io.Copy(io.Discard, c)
	for _, key := range []string{"w", "l"} {
		fmt.Fprintf(c, "sendkey alt-sysrq-%s\n", key)
		time.Sleep(3 * time.Second)
	}
}
