package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// extractVmlinux writes the uncompressed ELF kernel inside a bzImage to dst.
// qemu boots it through its PVH entry point, skipping the decompressor (slow
// under emulation).
func extractVmlinux(bzImage, dst string) error {
	img, err := os.ReadFile(bzImage)
	if err != nil {
		return err
	}
	// Boot protocol header (Documentation/arch/x86/boot.rst): the payload
	// fields exist from protocol 2.08 on.
	if len(img) < 0x250 || string(img[0x202:0x206]) != "HdrS" || binary.LittleEndian.Uint16(img[0x206:]) < 0x208 {
		return errors.New("not a bzImage of boot protocol 2.08 or later")
	}
	setupSects := int(img[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(img[0x248:]))
	n := int(binary.LittleEndian.Uint32(img[0x24c:]))
	if off+n > len(img) {
		return errors.New("payload beyond the end of the bzImage")
	}
	payload := img[off : off+n]

	var out bytes.Buffer
	switch {
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return err
		}
		if _, err := io.Copy(&out, zr); err != nil {
			return err
		}
	case bytes.HasPrefix(payload, []byte("\xfd7zXZ\x00")):
		err = decompressWith(&out, payload, "xz", "-dc", "--single-stream")
	case bytes.HasPrefix(payload, []byte{0x28, 0xb5, 0x2f, 0xfd}) && len(payload) > 4:
		// The kernel's build appends the uncompressed size (4 bytes)
		// after the stream, which xz's --single-stream ignores and zstd
		// would read as a frame of an unknown format (6.12's images).
		err = decompressWith(&out, payload[:len(payload)-4], "zstd", "-dcq")
	default:
		return fmt.Errorf("unknown compression (magic % x)", payload[:4])
	}
	if err != nil {
		return err
	}
	f, err := elf.NewFile(bytes.NewReader(out.Bytes()))
	if err != nil {
		return fmt.Errorf("payload is not ELF: %w", err)
	}
	defer f.Close()
	if !hasPVHNote(f) {
		return errors.New("vmlinux has no PVH entry point (CONFIG_PVH)")
	}
	return os.WriteFile(dst, out.Bytes(), 0o644)
}

func decompressWith(out *bytes.Buffer, in []byte, tool string, args ...string) error {
	c := exec.Command(tool, args...)
	c.Stdin, c.Stdout = bytes.NewReader(in), out
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s: %v: %s", tool, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// hasPVHNote looks for the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY, which is
// what qemu's PVH loader boots from.
func hasPVHNote(f *elf.File) bool {
	const phys32Entry = 18
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b, err := io.ReadAll(p.Open())
		if err != nil {
			continue
		}
		for len(b) >= 12 {
			nameSz := int(f.ByteOrder.Uint32(b[0:]))
			descSz := int(f.ByteOrder.Uint32(b[4:]))
			typ := f.ByteOrder.Uint32(b[8:])
			name := (nameSz + 3) &^ 3
			desc := (descSz + 3) &^ 3
			if 12+name > len(b) {
				break
			}
			if typ == phys32Entry && strings.TrimRight(string(b[12:12+nameSz]), "\x00") == "Xen" {
				return true
			}
			if 12+name+desc > len(b) {
				break
			}
			b = b[12+name+desc:]
		}
	}
	return false
}

func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// moduleLoadOrder returns the files (relative to the modules directory) that
// must be inserted for want, each after its dependencies, each once. Modules
// built into the kernel are skipped.
func moduleLoadOrder(modulesDep io.Reader, builtin io.Reader, want []string) ([]string, error) {
	deps := map[string][]string{} // module file -> files it needs
	byName := map[string]string{} // module name -> module file
	sc := bufio.NewScanner(modulesDep)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		file, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[file] = strings.Fields(rest)
		byName[moduleName(file)] = file
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	isBuiltin := map[string]bool{}
	if builtin != nil {
		sc := bufio.NewScanner(builtin)
		for sc.Scan() {
			isBuiltin[moduleName(sc.Text())] = true
		}
	}

	var order []string
	done := map[string]bool{}
	var visit func(file string, depth int) error
	visit = func(file string, depth int) error {
		if done[file] {
			return nil
		}
		if depth > 64 {
			return fmt.Errorf("module dependency loop at %s", file)
		}
		for _, d := range deps[file] {
			if err := visit(d, depth+1); err != nil {
				return err
			}
		}
		done[file] = true
		order = append(order, file)
		return nil
	}
	for _, name := range want {
		name = strings.ReplaceAll(name, "-", "_")
		file, ok := byName[name]
		if !ok {
			if isBuiltin[name] {
				continue
			}
			return nil, fmt.Errorf("module %s is neither in modules.dep nor built in", name)
		}
		if err := visit(file, 0); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleName is the name a module file loads as: kernel/fs/9p/9p.ko -> 9p.
func moduleName(file string) string {
	base := filepath.Base(strings.TrimSpace(file))
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// cpioWriter writes a "newc" cpio archive, the format the kernel unpacks as
// its initramfs.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

func (c *cpioWriter) header(name string, mode, size, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(hdr + name + "\x00"))
	c.pad(len(hdr) + len(name) + 1)
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) Dir(name string) { c.header(name, 0o040755, 0, 0, 0) }

func (c *cpioWriter) CharDev(name string, major, minor uint32) {
	c.header(name, 0o020600, 0, major, minor)
}

func (c *cpioWriter) File(name string, perm uint32, data []byte) {
	c.header(name, 0o100000|perm, uint32(len(data)), 0, 0)
	c.write(data)
	c.pad(len(data))
}

func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	return c.err
}

// stage1 is the initramfs's /init: load the boot modules, build the guest's
// root (the host's / read-only over 9p under a tmpfs overlay), and hand over
// to the runner binary itself, which sets up the rest in Go.
const stage1 = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "podpath-vm stage1: $*"; reboot -f; }
mount -t proc proc /proc
for m in /modules/*.ko; do
	[ -e "$m" ] || continue
	insmod "$m" || fail "insmod $m"
done
init= spec=
for a in $(cat /proc/cmdline); do
	case "$a" in
	podpath.init=*) init=${a#podpath.init=} ;;
	podpath.spec=*) spec=${a#podpath.spec=} ;;
	esac
done
[ -n "$init" ] && [ -n "$spec" ] || fail "podpath.init or podpath.spec missing from the command line"
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower || fail "mount the host's / over 9p"
mount -t tmpfs -o mode=0755 overlay-rw /rw || fail "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "mount overlay"
umount /proc
exec switch_root /newroot "$init" ` + guestFlag + ` "$spec"
`

// bootModules must be loaded before the root file system exists: the PCI
// transport, the serial ports that carry output back, 9p over virtio and
// overlayfs. Everything else autoloads later from the real modules tree.
// (qemu's microvm machine would boot faster, but it has no HPET or ACPI PM
// timer: on a busy host an emulated CPU then fails to calibrate its TSC and
// hangs at boot.)
var bootModules = []string{"virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay"}

// writeInitramfs builds the guest's initramfs: a static busybox, stage1 and
// the boot modules in load order.
func writeInitramfs(path string, k Kernel) error {
	busybox, err := findBusybox()
	if err != nil {
		return err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	dep, err := os.Open(filepath.Join(k.ModulesDir(), "modules.dep"))
	if err != nil {
		return fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	defer dep.Close()
	var builtin io.Reader
	if f, err := os.Open(filepath.Join(k.ModulesDir(), "modules.builtin")); err == nil {
		defer f.Close()
		builtin = f
	}
	order, err := moduleLoadOrder(dep, builtin, bootModules)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", k.Release, err)
	}

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(f)
	c := &cpioWriter{w: bw}
	for _, d := range []string{"bin", "dev", "proc", "sys", "modules"} {
		c.Dir(d)
	}
	c.CharDev("dev/console", 5, 1)
	c.File("bin/busybox", 0o755, bb)
	c.File("init", 0o755, []byte(stage1))
	names := make([]string, len(order))
	for i, m := range order {
		data, err := os.ReadFile(filepath.Join(k.ModulesDir(), m))
		if err != nil {
			f.Close()
			return err
		}
		// Compressed modules (6.12's are .ko.xz) go in as plain .ko:
		// busybox's insmod hands the file to the kernel as it is.
		base := filepath.Base(m)
		for ext, tool := range map[string]string{".xz": "xz", ".zst": "zstd"} {
			if strings.HasSuffix(base, ".ko"+ext) {
				var out bytes.Buffer
				if err := decompressWith(&out, data, tool, "-dcq"); err != nil {
					f.Close()
					return fmt.Errorf("module %s: %w", m, err)
				}
				data, base = out.Bytes(), strings.TrimSuffix(base, ext)
			}
		}
		// The numeric prefix keeps the load order in the shell's glob.
		names[i] = fmt.Sprintf("modules/%02d-%s", i, base)
		c.File(names[i], 0o644, data)
	}
	if !sort.StringsAreSorted(names) {
		f.Close()
		return errors.New("too many boot modules for two-digit ordering")
	}
	if err := c.Close(); err != nil {
		f.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
