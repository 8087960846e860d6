package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// debianRelease is the Debian release whose own kernel is each LTS series.
// Only series in this table can be fetched from a release other than the
// host's.
var debianRelease = map[string]string{
	"6.1":  "bookworm",
	"5.10": "bullseye",
}

// kernelInfo is written beside an unpacked kernel once it is complete.
const kernelInfo = "kernel.json"

// Kernel is an unpacked, prepared kernel package.
type Kernel struct {
	Dir     string `json:"-"`
	Package string `json:"package"` // Debian package name
	Version string `json:"version"` // Debian package version
	Release string `json:"release"` // uname -r
	Image   string `json:"image"`   // file to boot, relative to Dir
}

// ModulesDir is the kernel's /lib/modules/RELEASE on the host.
func (k Kernel) ModulesDir() string {
	return filepath.Join(k.Dir, "root", "lib", "modules", k.Release)
}

// ImagePath is the kernel image to boot.
func (k Kernel) ImagePath() string { return filepath.Join(k.Dir, k.Image) }

func cacheRoot() string {
	if d := os.Getenv("PODPATH_VM_CACHE"); d != "" {
		return d
	}
	return "/var/cache/podpath-vm"
}

func openKernel(dir string) (Kernel, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return Kernel{}, err
	}
	b, err := os.ReadFile(filepath.Join(dir, kernelInfo))
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel directory %s is not prepared: %w", dir, err)
	}
	k := Kernel{Dir: dir}
	if err := json.Unmarshal(b, &k); err != nil {
		return Kernel{}, fmt.Errorf("%s: %w", filepath.Join(dir, kernelInfo), err)
	}
	return k, nil
}

// resolveKernel returns the directory of a prepared kernel of the series,
// fetching and preparing one when the cache has none (or, with refresh, when
// apt knows a newer one).
func resolveKernel(series, root string, refresh bool, log io.Writer) (string, error) {
	if !regexp.MustCompile(`^[0-9]+\.[0-9]+$`).MatchString(series) {
		return "", fmt.Errorf("want a kernel series like 6.1, not %q", series)
	}
	if !refresh {
		if dir, ok := newestCached(series, root); ok {
			return dir, nil
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	// Runners started side by side (go test -exec runs packages in
	// parallel) fetch once: the others wait here, then find it cached.
	lock, err := os.OpenFile(filepath.Join(root, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if !refresh {
		if dir, ok := newestCached(series, root); ok {
			return dir, nil
		}
	}

	a, pkg, err := findPackage(series, root, log)
	if err != nil {
		return "", err
	}
	release := strings.TrimPrefix(strings.TrimSuffix(pkg, "-unsigned"), "linux-image-")
	dir := filepath.Join(root, release)
	if _, err := openKernel(dir); err == nil {
		return dir, nil
	}
	fmt.Fprintf(log, "vm runner: fetching %s into %s\n", pkg, dir)
	if err := prepareKernel(a, pkg, dir); err != nil {
		return "", err
	}
	return dir, nil
}

// newestCached finds the newest prepared kernel of the series in root.
func newestCached(series, root string) (string, bool) {
	entries, _ := os.ReadDir(root)
	var best string
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), series+".") {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, e.Name(), kernelInfo)); err != nil {
			continue
		}
		if best == "" || versionLess(best, e.Name()) {
			best = e.Name()
		}
	}
	if best == "" {
		return "", false
	}
	return filepath.Join(root, best), true
}

// versionLess orders kernel releases by their numbers: 6.1.0-9 < 6.1.0-56.
func versionLess(a, b string) bool {
	na, nb := versionNumbers(a), versionNumbers(b)
	for i := 0; i < len(na) && i < len(nb); i++ {
		if na[i] != nb[i] {
			return na[i] < nb[i]
		}
	}
	if len(na) != len(nb) {
		return len(na) < len(nb)
	}
	return a < b
}

func versionNumbers(s string) []int {
	var ns []int
	for _, f := range regexp.MustCompile(`[0-9]+`).FindAllString(s, -1) {
		n, _ := strconv.Atoi(f)
		ns = append(ns, n)
	}
	return ns
}

// apt runs apt-get and apt-cache, against the system's state or a private one.
type apt struct {
	opts []string // -o options selecting a private state; none for the system's
}

func (a apt) cmd(name string, args ...string) *exec.Cmd {
	all := append([]string{"-o", "APT::Sandbox::User=root"}, a.opts...)
	return exec.Command(name, append(all, args...)...)
}

func (a apt) update() error {
	c := a.cmd("apt-get", "-qq", "update")
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	return nil
}

// imagePackages lists the generic, unsigned amd64 kernel images of the
// series that apt knows, newest first (no -cloud: it lacks the 9p modules).
func (a apt) imagePackages(series string) ([]string, error) {
	out, err := a.cmd("apt-cache", "search", "--names-only", "^linux-image-"+regexp.QuoteMeta(series)+`\.`).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache search: %w", err)
	}
	return pickImages(series, out), nil
}

func pickImages(series string, searchOutput []byte) []string {
	re := regexp.MustCompile(`^linux-image-(` + regexp.QuoteMeta(series) + `\.[0-9]+[-+][0-9a-z]+)-amd64-unsigned$`)
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(searchOutput))
	for sc.Scan() {
		name, _, _ := strings.Cut(sc.Text(), " ")
		if m := re.FindStringSubmatch(name); m != nil {
			names = append(names, name)
		}
	}
	sort.Slice(names, func(i, j int) bool { return versionLess(names[j], names[i]) })
	return names
}

// findPackage finds the newest image package of the series: first in the
// system's apt sources (updating them once if they know none), then in the
// Debian release that ships the series, through a private apt state.
func findPackage(series, root string, log io.Writer) (apt, string, error) {
	sys := apt{}
	pkgs, err := sys.imagePackages(series)
	if err != nil {
		return apt{}, "", err
	}
	if len(pkgs) == 0 {
		if err := sys.update(); err != nil {
			return apt{}, "", err
		}
		if pkgs, err = sys.imagePackages(series); err != nil {
			return apt{}, "", err
		}
	}
	if len(pkgs) > 0 {
		return sys, pkgs[0], nil
	}
	codename, ok := debianRelease[series]
	if !ok {
		return apt{}, "", fmt.Errorf("no linux-image-%s.*-amd64-unsigned in the apt sources, and no Debian release known for it", series)
	}
	priv, err := privateApt(filepath.Join(root, "apt", codename), codename)
	if err != nil {
		return apt{}, "", err
	}
	fmt.Fprintf(log, "vm runner: looking for linux-image-%s in Debian %s\n", series, codename)
	if err := priv.update(); err != nil {
		return apt{}, "", err
	}
	if pkgs, err = priv.imagePackages(series); err != nil {
		return apt{}, "", err
	}
	if len(pkgs) == 0 {
		return apt{}, "", fmt.Errorf("no linux-image-%s.*-amd64-unsigned in Debian %s either", series, codename)
	}
	return priv, pkgs[0], nil
}

// privateApt sets up an apt state in dir that reads the Debian release
// codename from the mirrors the system's sources already use.
func privateApt(dir, codename string) (apt, error) {
	out, err := exec.Command("apt-get", "indextargets", "--format", "$(REPO_URI) $(LABEL)").Output()
	if err != nil {
		return apt{}, fmt.Errorf("apt-get indextargets: %w", err)
	}
	var lines []string
	seen := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		uri, label, _ := strings.Cut(strings.TrimSpace(l), " ")
		var suite string
		switch label {
		case "Debian":
			suite = codename
		case "Debian-Security":
			suite = codename + "-security"
		default:
			continue
		}
		line := fmt.Sprintf("deb %s %s main", uri, suite)
		if kr := "/usr/share/keyrings/debian-archive-keyring.gpg"; fileExists(kr) {
			line = fmt.Sprintf("deb [signed-by=%s] %s %s main", kr, uri, suite)
		}
		if !seen[line] {
			seen[line] = true
			lines = append(lines, line)
		}
	}
	if len(lines) == 0 {
		// Not a Debian system (Ubuntu, say): Debian's own mirror, checked
		// against debian-archive-keyring, which such systems package too.
		kr := "/usr/share/keyrings/debian-archive-keyring.gpg"
		if !fileExists(kr) {
			return apt{}, fmt.Errorf("the system's apt sources name no Debian mirror, and %s is missing to check deb.debian.org's (apt-get install debian-archive-keyring)", kr)
		}
		lines = []string{
			fmt.Sprintf("deb [signed-by=%s] http://deb.debian.org/debian %s main", kr, codename),
			fmt.Sprintf("deb [signed-by=%s] http://deb.debian.org/debian-security %s-security main", kr, codename),
		}
	}
	for _, d := range []string{"lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return apt{}, err
		}
	}
	list := filepath.Join(dir, "sources.list")
	if err := os.WriteFile(list, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return apt{}, err
	}
	return apt{opts: []string{
		"-o", "Dir::Etc::SourceList=" + list,
		"-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Dir::State::Lists=" + filepath.Join(dir, "lists"),
		"-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
		"-o", "Dir::State::Status=/dev/null",
	}}, nil
}

// prepareKernel downloads and unpacks pkg into dir: the package's files under
// root/, modules.dep, the image to boot, and kernelInfo last, so that a
// directory with kernelInfo is always complete.
func prepareKernel(a apt, pkg, dir string) error {
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	dl := a.cmd("apt-get", "-qq", "download", pkg)
	dl.Dir, dl.Stdout, dl.Stderr = tmp, os.Stderr, os.Stderr
	if err := dl.Run(); err != nil {
		return fmt.Errorf("apt-get download %s: %w", pkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	k := Kernel{Package: pkg}
	out, err := exec.Command("dpkg-deb", "--field", debs[0], "Version").Output()
	if err != nil {
		return fmt.Errorf("dpkg-deb --field %s: %w", debs[0], err)
	}
	k.Version = strings.TrimSpace(string(out))
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], filepath.Join(tmp, "root")).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %v: %s", debs[0], err, out)
	}
	os.Remove(debs[0])

	mods, err := os.ReadDir(filepath.Join(tmp, "root", "lib", "modules"))
	if err != nil || len(mods) != 1 {
		return fmt.Errorf("%s: want one lib/modules/RELEASE directory (%v)", pkg, err)
	}
	k.Release = mods[0].Name()
	busybox, err := findBusybox()
	if err != nil {
		return err
	}
	if out, err := exec.Command(busybox, "depmod", "-b", filepath.Join(tmp, "root"), k.Release).CombinedOutput(); err != nil {
		return fmt.Errorf("busybox depmod: %v: %s", err, out)
	}

	bz := filepath.Join(tmp, "root", "boot", "vmlinuz-"+k.Release)
	k.Image = "vmlinux"
	if err := extractVmlinux(bz, filepath.Join(tmp, k.Image)); err != nil {
		// The bzImage boots too, only a little slower.
		fmt.Fprintf(os.Stderr, "vm runner: booting the bzImage: %v\n", err)
		k.Image = filepath.Join("root", "boot", "vmlinuz-"+k.Release)
	}

	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, kernelInfo), append(b, '\n'), 0o644); err != nil {
		return err
	}
	os.RemoveAll(dir)
	return os.Rename(tmp, dir)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// findBusybox finds a statically linked busybox: it runs in the initramfs,
// where there are no shared libraries.
func findBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox"} {
		if isStatic(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("busybox"); err == nil && isStatic(p) {
		return p, nil
	}
	return "", errors.New("no statically linked busybox (apt-get install busybox-static)")
}
