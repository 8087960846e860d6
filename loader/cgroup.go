package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/podpath/podpath/maps"
	"golang.org/x/sys/unix"
)

// Socket-level load balancing: the programs of bpf/sock.c on a cgroup v2.
// Every process in the cgroup (and in the cgroups below it) that connects
// to a service frontend from the node's network namespace is sent to a
// backend by its connect() or sendmsg(), with no per-packet NAT.

// DefaultCgroup2Mount is where podpath mounts cgroup v2 when the host has it
// nowhere (hosts that still run cgroup v1 for their processes).
const DefaultCgroup2Mount = "/run/podpath/cgroupv2"

// hookCgroup is the hook part of a cgroup link's pin name.
const hookCgroup = "cgroup"

// loadSocketLB loads the socket object for the node in c, restricted to the
// network namespace of the calling thread, pins its programs and points
// every cgroup they are attached to at the new versions. Init calls it
// after the device attachments are replaced. On a kernel that cannot name
// the namespace (no SO_NETNS_COOKIE) the programs could not tell the node's
// sockets from pods', so they are not loaded and AttachSocketLB refuses.
func loadSocketLB(c Config) error {
	f, err := Probe()
	if err != nil {
		return err
	}
	if !f.NetnsCookie {
		slog.Info("socket load balancing not available", "reason", ErrNoNetnsCookie)
		return nil
	}
	spec, err := maps.SocketSpec()
	if err != nil {
		return err
	}
	if err := sizeMaps(spec, c); err != nil {
		return fmt.Errorf("sock: %w", err)
	}
	cookie, err := NetnsCookie()
	if err != nil {
		return err
	}
	v, ok := spec.Variables[maps.VarNodeNetnsCookie]
	if !ok {
		return fmt.Errorf("sock object has no variable %s", maps.VarNodeNetnsCookie)
	}
	if err := v.Set(cookie); err != nil {
		return fmt.Errorf("set %s: %w", maps.VarNodeNetnsCookie, err)
	}
	if err := checkPinnedMaps(c.PinRoot, spec); err != nil {
		return err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: c.PinRoot},
	})
	if err != nil {
		return fmt.Errorf("load sock: %w", err)
	}
	defer coll.Close()
	for _, name := range maps.SocketPrograms {
		prog := coll.Programs[name]
		if prog == nil {
			return fmt.Errorf("object sock has no program %s", name)
		}
		if err := pinProgram(c.PinRoot, name, prog); err != nil {
			return err
		}
	}
	return replaceCgroupAttached(c.PinRoot, coll.Programs)
}

// ErrNoNetnsCookie is NetnsCookie's error on kernels that cannot tell a
// socket's network namespace cookie (before 5.14).
var ErrNoNetnsCookie = errors.New("the kernel does not report network namespace cookies (SO_NETNS_COOKIE, Linux 5.14)")

// NetnsCookie identifies the calling thread's network namespace as
// bpf_get_netns_cookie() does (the endpoints map records each pod's).
func NetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return 0, ErrNoNetnsCookie
	}
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return c, nil
}

// EnsureCgroup2 makes sure dir is a cgroup v2 directory. One already (a
// cgroup2 mount or a cgroup inside one) is left as it is; a missing or empty
// directory on any other filesystem gets cgroup2 mounted on it. mounted says
// whether this call mounted it. A cgroup that does not exist inside a
// cgroup2 mount is an error: cgroups belong to whoever runs the processes.
func EnsureCgroup2(dir string) (mounted bool, err error) {
	dir = filepath.Clean(dir)
	var st unix.Statfs_t
	err = unix.Statfs(dir, &st)
	switch {
	case err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC:
		return false, nil
	case err == nil && st.Type == unix.CGROUP_SUPER_MAGIC:
		return false, fmt.Errorf("%s is a cgroup v1 hierarchy: socket load balancing needs cgroup v2 (mount it elsewhere, for example %s)", dir, DefaultCgroup2Mount)
	case err == nil:
		entries, err := os.ReadDir(dir)
		if err != nil {
			return false, fmt.Errorf("mount cgroup2 on %s: %w", dir, err)
		}
		if len(entries) > 0 {
			return false, fmt.Errorf("%s is neither cgroup v2 nor empty: not mounting cgroup2 over it", dir)
		}
	case errors.Is(err, unix.ENOENT):
		for parent := filepath.Dir(dir); ; parent = filepath.Dir(parent) {
			if unix.Statfs(parent, &st) == nil {
				if st.Type == unix.CGROUP2_SUPER_MAGIC || st.Type == unix.CGROUP_SUPER_MAGIC {
					return false, fmt.Errorf("no cgroup %s (create it, or name where cgroup2 is or should be mounted)", dir)
				}
				break
			}
			if parent == "/" {
				break
			}
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return false, fmt.Errorf("mount cgroup2 on %s: %w", dir, err)
		}
	default:
		return false, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if err := unix.Mount("cgroup2", dir, "cgroup2", 0, ""); err != nil {
		return false, fmt.Errorf("mount cgroup2 on %s: %w", dir, err)
	}
	return true, nil
}

// AttachSocketLB attaches the node's socket programs (pinned under root by
// Init) to the cgroup v2 at cgroupPath, mounting cgroup2 there first when
// it is a missing or empty directory (see EnsureCgroup2). The links are
// pinned, so the programs stay attached after this process exits; attaching
// again to the same cgroup updates them in place. Several nodes may attach
// to one cgroup: each translates only sockets of its own network namespace.
func AttachSocketLB(root, cgroupPath string) error {
	if f, err := Probe(); err != nil {
		return err
	} else if !f.NetnsCookie {
		return fmt.Errorf("socket load balancing: %w", ErrNoNetnsCookie)
	}
	cgroupPath = filepath.Clean(cgroupPath)
	if !filepath.IsAbs(cgroupPath) {
		return fmt.Errorf("socket load balancing: cgroup %s: want an absolute path", cgroupPath)
	}
	if _, err := EnsureCgroup2(cgroupPath); err != nil {
		return fmt.Errorf("socket load balancing: %w", err)
	}
	id, err := cgroupID(cgroupPath)
	if err != nil {
		return err
	}
	spec, err := maps.SocketSpec()
	if err != nil {
		return err
	}
	for _, name := range maps.SocketPrograms {
		prog, err := LoadPinnedProgram(root, name)
		if err != nil {
			return err
		}
		err = attachCgroup(root, name, prog, spec.Programs[name].AttachType, cgroupPath, id)
		prog.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func attachCgroup(root, name string, prog *ebpf.Program, attach ebpf.AttachType, cgroupPath string, id uint64) error {
	pin := cgroupLinkPin(root, name, cgroupPath)
	// Not a link on a removed cgroup that had the same path.
	reused, err := reusePinnedLink(pin, prog, func(info *link.Info) bool {
		return info.Cgroup() != nil && info.Cgroup().CgroupId == id
	})
	if err != nil {
		return fmt.Errorf("attach %s to cgroup %s: update link: %w", name, cgroupPath, err)
	}
	if reused {
		return nil
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: attach, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s to cgroup %s: %w", name, cgroupPath, err)
	}
	defer l.Close()
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return err
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin link %s: %w (this kernel may lack bpf_link for cgroups)", pin, err)
	}
	return nil
}

// DetachSocketLB detaches the node's socket programs from the cgroup at
// cgroupPath: the forward translation first, so no socket gets a backend it
// cannot see as the frontend. Programs that are not attached there are not
// an error. cgroup2 stays mounted.
func DetachSocketLB(root, cgroupPath string) error {
	cgroupPath = filepath.Clean(cgroupPath)
	var errs []error
	for _, name := range slices.Backward(maps.SocketPrograms) {
		pin := cgroupLinkPin(root, name, cgroupPath)
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			if rerr := os.Remove(pin); rerr != nil {
				errs = append(errs, fmt.Errorf("detach %s from cgroup %s: %w", name, cgroupPath, err))
			}
			continue
		}
		if err := dropLink(l); err != nil {
			errs = append(errs, fmt.Errorf("detach %s from cgroup %s: %w", name, cgroupPath, err))
		}
	}
	return errors.Join(errs...)
}

// CgroupAttachment is a socket program attached to a cgroup.
type CgroupAttachment struct {
	Program string `json:"program"`
	Cgroup  string `json:"cgroup"`
	// CgroupID is the cgroup's id; 0 when the cgroup was removed and the
	// link is left without one.
	CgroupID  uint64 `json:"cgroupID"`
	ProgramID uint32 `json:"programID"`
	pin       string
}

// CgroupAttachments lists the node's socket programs attached to cgroups,
// from the links pinned under root.
func CgroupAttachments(root string) ([]CgroupAttachment, error) {
	entries, err := os.ReadDir(maps.LinkDir(root))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []CgroupAttachment
	for _, e := range entries {
		prog, cgroup, ok := parseCgroupLinkPin(e.Name())
		if !ok {
			continue
		}
		a := CgroupAttachment{Program: prog, Cgroup: cgroup, pin: filepath.Join(maps.LinkDir(root), e.Name())}
		if l, err := link.LoadPinnedLink(a.pin, nil); err == nil {
			if info, err := l.Info(); err == nil {
				a.ProgramID = uint32(info.Program)
				if cg := info.Cgroup(); cg != nil {
					a.CgroupID = cg.CgroupId
				}
			}
			l.Close()
		}
		out = append(out, a)
	}
	return out, nil
}

// replaceCgroupAttached points every cgroup link of a socket program at its
// new version; links whose cgroup is gone are unpinned.
func replaceCgroupAttached(root string, progs map[string]*ebpf.Program) error {
	atts, err := CgroupAttachments(root)
	if err != nil {
		return err
	}
	for _, a := range atts {
		prog, ok := progs[a.Program]
		if !ok {
			continue
		}
		err := updatePinnedLink(a.pin, prog)
		if errors.Is(err, unix.ENOLINK) {
			// The cgroup is gone: the pin is all that is left of it.
			err = os.Remove(a.pin)
		}
		if err != nil {
			return fmt.Errorf("replace %s on cgroup %s: %w", a.Program, a.Cgroup, err)
		}
	}
	return nil
}

// cgroupID is the id the kernel reports for the cgroup at path: on cgroup2
// it is the directory's inode number.
func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// cgroupLinkPin is where the link of a socket program on a cgroup is pinned:
// "<prog>@cgroup@<escaped path>", beside the device links.
func cgroupLinkPin(root, prog, cgroupPath string) string {
	return filepath.Join(maps.LinkDir(root), prog+"@"+hookCgroup+"@"+escapeCgroupPath(cgroupPath))
}

// parseCgroupLinkPin reverses cgroupLinkPin's name.
func parseCgroupLinkPin(name string) (prog, cgroupPath string, ok bool) {
	parts := strings.SplitN(name, "@", 3)
	if len(parts) != 3 || parts[1] != hookCgroup || !slices.Contains(maps.SocketPrograms, parts[0]) {
		return "", "", false
	}
	cgroupPath, ok = unescapeCgroupPath(parts[2])
	return parts[0], cgroupPath, ok
}

// escapeCgroupPath turns a path into one file name the way
// `systemd-escape --path` does ("/run/podpath/cgroupv2" becomes
// "run-podpath-cgroupv2", "-" becomes "\x2d"), except that every byte other
// than a letter, digit or underscore is escaped, dots included: bpffs
// refuses dots in names.
func escapeCgroupPath(path string) string {
	path = strings.Trim(filepath.Clean(path), "/")
	if path == "" {
		return "-"
	}
	var b strings.Builder
	for i := 0; i < len(path); i++ {
		switch c := path[i]; {
		case c == '/':
			b.WriteByte('-')
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, `\x%02x`, c)
		}
	}
	return b.String()
}

// unescapeCgroupPath reverses escapeCgroupPath.
func unescapeCgroupPath(name string) (string, bool) {
	if name == "-" {
		return "/", true
	}
	var b strings.Builder
	b.WriteByte('/')
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '-':
			b.WriteByte('/')
		case c == '\\':
			if i+3 >= len(name) || name[i+1] != 'x' {
				return "", false
			}
			v, err := strconv.ParseUint(name[i+2:i+4], 16, 8)
			if err != nil {
				return "", false
			}
			b.WriteByte(byte(v))
			i += 3
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}
