// Command runner runs one command as root inside a Debian LTS kernel under
// qemu, with this machine's file system for a root, and exits with the
// command's exit code. It is how podpath's tests run on kernels other than
// the host's.
//
//	go run ./test/vm/runner -kernel 6.1 -- ip -br link
//	go build -o /tmp/vm-runner ./test/vm/runner
//	go test -exec "/tmp/vm-runner -kernel 6.1" ./loader
//
// scripts/vmtest.sh uses it to run every test package in the guest.
//
// # What the guest sees
//
// The host's / is shared read-only over 9p and mounted under an overlay whose
// upper layer is a tmpfs: the guest sees every host binary (Go test binaries
// built on the host included) and can write anywhere, and its writes vanish
// when it powers off. Directories named with -rw are shared read-write at the
// same path, so results can come back. The command runs as root in the
// caller's working directory with the caller's environment (less a few
// variables that only make sense in the host's login session), on a kernel
// with proc, sysfs, devtmpfs, devpts, bpffs (/sys/fs/bpf), debugfs, tracefs,
// cgroup2 and a tmpfs /run (so `ip netns` works), loopback up, and modules
// loaded on demand by busybox modprobe (veth, sch_ingress, cls_bpf, ...).
// stdin is not forwarded; stdout and stderr are streamed as the command
// writes them.
//
// # Kernels
//
// -kernel SERIES picks the newest cached kernel of that series (6.1 and
// 5.10 in the tests; 6.12, from Debian 12's backported images, boots too),
// and when none is cached downloads the newest generic
// linux-image-SERIES.*-amd64-unsigned package with apt-get, unpacks it with
// dpkg-deb, builds modules.dep with busybox depmod and extracts the
// uncompressed vmlinux (booted through PVH, faster than the bzImage under
// emulation). The cache is /var/cache/podpath-vm/RELEASE, or
// $PODPATH_VM_CACHE/RELEASE; a second run downloads nothing. A series that
// this machine's apt sources do not carry (5.10 on a Debian 12 host) is
// looked up in the Debian release that ships it, through the same mirrors,
// with a private apt state under the cache (the system's sources are left
// alone). -refresh looks for a newer package even when one is cached;
// -kernel-dir DIR uses a prepared kernel directory as it is;
// -print-kernel-dir prepares the kernel, prints its directory and exits.
//
// # Acceleration
//
// KVM is used when kvm_intel or kvm_amd is loaded and /dev/kvm opens;
// otherwise qemu emulates the CPU (TCG), which costs about 3 s per boot and
// makes guest code 10-30 times slower than the host's: loading a BPF program
// is mostly the verifier's CPU time, and it is what the tests wait for. Build
// everything on the host and run only the result in the guest. The guest has
// 2 CPUs and 1.5 GiB unless -cpus and -mem say otherwise (scripts/vmtest.sh
// gives its guests 4 GiB); -append adds to the kernel command line.
//
// # Exit status
//
// The command's exit code, 128+N when a signal N ended it, and 125 when the
// VM itself failed: it did not boot within -boot-timeout (3m), ran past
// -timeout, stalled (-stall: nothing written under -stall-dir for that long;
// the guest kernel's blocked tasks and CPUs are dumped to the console first),
// or powered off without reporting. Then the tail of the guest's
// console log is printed to stderr; -v streams the whole log as it is
// written.
//
// # Requirements
//
// qemu-system-x86 and busybox-static (scripts/install-deps.sh installs
// both), apt-get and dpkg-deb, xz-utils (without it the bzImage is booted),
// and root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// exitVMFailed is the runner's own failure: the guest never reported an exit
// code.
const exitVMFailed = 125

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	// The same binary is the guest's init after switch_root.
	if len(os.Args) == 3 && os.Args[1] == guestFlag {
		os.Exit(guestMain(os.Args[2]))
	}

	var (
		series    = flag.String("kernel", "6.1", "kernel series to boot: 6.1, 5.10 (the tests' two) or 6.12")
		kernelDir = flag.String("kernel-dir", "", "prepared kernel directory to boot (overrides -kernel)")
		refresh   = flag.Bool("refresh", false, "look for a newer kernel package even when one is cached")
		printDir  = flag.Bool("print-kernel-dir", false, "prepare the kernel, print its directory and exit")
		cpus      = flag.Int("cpus", 2, "guest CPUs")
		memMiB    = flag.Int("mem", 1536, "guest memory in MiB")
		accel     = flag.String("accel", "auto", "auto, kvm or tcg")
		timeout   = flag.Duration("timeout", 0, "stop the VM after this long (0: never)")
		bootLimit = flag.Duration("boot-timeout", 3*time.Minute, "stop the VM if the command has not started after this long")
		verbose   = flag.Bool("v", false, "stream the guest's console log to stderr")
		appendArg = flag.String("append", "", "more kernel command line")
		console   = flag.String("console", "", "keep the guest's console log in this file")
		stallDir  = flag.String("stall-dir", "", "directory whose writes show the guest is alive (with -stall)")
		stall     = flag.Duration("stall", 0, "stop the VM when nothing under -stall-dir has been written for this long, after dumping the guest kernel's stacks to the console (0: never)")
		rw        stringList
	)
	flag.Var(&rw, "rw", "host directory to share read-write at the same path (repeatable)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] [--] CMD [ARGS...]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()

	dir := *kernelDir
	if dir == "" {
		var err error
		dir, err = resolveKernel(*series, cacheRoot(), *refresh, os.Stderr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "vm runner: kernel %s: %v\n", *series, err)
			os.Exit(exitVMFailed)
		}
	}
	k, err := openKernel(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vm runner: %v\n", err)
		os.Exit(exitVMFailed)
	}
	if *printDir {
		fmt.Println(k.Dir)
		return
	}
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *stall > 0 && *stallDir == "" {
		fmt.Fprintln(os.Stderr, "vm runner: -stall needs -stall-dir")
		os.Exit(2)
	}

	cwd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(os.Stderr, "vm runner: %v\n", err)
		os.Exit(exitVMFailed)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	start := time.Now()
	code, err := runVM(ctx, vmConfig{
		Kernel:      k,
		CPUs:        *cpus,
		MemMiB:      *memMiB,
		Accel:       *accel,
		Verbose:     *verbose,
		Append:      *appendArg,
		BootTimeout: *bootLimit,
		RW:          rw,
		ConsolePath: *console,
		StallDir:    *stallDir,
		StallAfter:  *stall,
		Spec: guestSpec{
			Args: flag.Args(),
			Env:  guestEnv(os.Environ()),
			Dir:  cwd,
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "vm runner: %v (after %s)\n", err, time.Since(start).Round(time.Millisecond))
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			fmt.Fprintf(os.Stderr, "vm runner: timed out after %s\n", *timeout)
		}
		os.Exit(exitVMFailed)
	}
	os.Exit(code)
}

// hostOnlyEnv are variables that describe the caller's login session or
// process and mean nothing, or something wrong, inside the guest.
var hostOnlyEnv = map[string]bool{
	"PWD": true, "OLDPWD": true, "SHLVL": true, "_": true,
	"DISPLAY": true, "WAYLAND_DISPLAY": true, "XAUTHORITY": true,
	"XDG_RUNTIME_DIR": true, "XDG_SESSION_ID": true, "DBUS_SESSION_BUS_ADDRESS": true,
	"SSH_AUTH_SOCK": true, "SSH_AGENT_PID": true, "SSH_CONNECTION": true, "SSH_CLIENT": true, "SSH_TTY": true,
	"TMUX": true, "TMUX_PANE": true, "STY": true,
	"INVOCATION_ID": true, "JOURNAL_STREAM": true, "NOTIFY_SOCKET": true,
	"LISTEN_FDS": true, "LISTEN_PID": true, "LISTEN_FDNAMES": true,
}

// guestEnv is the caller's environment without hostOnlyEnv.
func guestEnv(environ []string) []string {
	var env []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !hostOnlyEnv[name] {
			env = append(env, kv)
		}
	}
	return env
}
