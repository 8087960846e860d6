package maps_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/maps/internal/srcsum"
)

// The committed objects and bindings are generated from bpf/ by the
// directives in gen.go; generated.sum records the digest of those inputs.
func TestGeneratedUpToDate(t *testing.T) {
	want, err := srcsum.Dir("../bpf", "gen.go")
	if err != nil {
		t.Fatal(err)
	}
	recorded, err := os.ReadFile("generated.sum")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(recorded)); got != want {
		t.Fatalf("bpf/ or maps/gen.go changed since the BPF objects were generated "+
			"(generated.sum has %s, the sources give %s): run `make generate` and commit the result", got, want)
	}
}

// The build is reproducible (clang records only the relative source paths
// given on the command line, and bpf2go strips DWARF), so rebuilding with
// gen.go's own directives must give the committed files: the Go bindings
// exactly, the objects exactly or, where clang ordered the BTF strings of
// forward-declared kernel structs (struct bpf_sock, bpf_flow_keys behind
// __sk_buff) otherwise, which it does by where the checkout lies, the same
// programs instruction for instruction and the same maps, layouts
// included. This catches a generated.sum refreshed without regenerating,
// or objects built by another compiler or with other flags.
func TestGeneratedReproducible(t *testing.T) {
	if _, err := exec.LookPath("clang-19"); err != nil {
		t.Skip("clang-19 is not on PATH, so the objects cannot be rebuilt here; TestGeneratedUpToDate still checks the sources' digest")
	}
	directives := bpf2goDirectives(t)
	if len(directives) == 0 {
		t.Fatal("gen.go has no bpf2go directives")
	}
	out := t.TempDir()
	for _, args := range directives {
		// Flags go before bpf2go's positional arguments.
		args = append([]string{"tool", "bpf2go", "-go-package", "maps", "-output-dir", out}, args...)
		cmd := exec.Command("go", args...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
	}
	built, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(built) == 0 {
		t.Fatal("bpf2go wrote nothing")
	}
	for _, f := range built {
		fresh, err := os.ReadFile(filepath.Join(out, f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(f.Name())
		if err != nil {
			t.Errorf("%s: rebuilt but not committed: %v", f.Name(), err)
			continue
		}
		if bytes.Equal(fresh, committed) {
			continue
		}
		if strings.HasSuffix(f.Name(), ".o") {
			diff := objectDiff(t, committed, fresh)
			if diff != "" {
				t.Errorf("%s differs from a fresh build: %s: run `make generate` and commit the result", f.Name(), diff)
			} else {
				t.Logf("%s: the same programs and maps as a fresh build; only the BTF's byte order differs", f.Name())
			}
			continue
		}
		t.Errorf("%s differs from a fresh build (%d bytes, fresh %d): run `make generate` and commit the result",
			f.Name(), len(committed), len(fresh))
	}
}

// objectDiff compares two BPF objects as the loader reads them: each
// program's type and instructions, each map's type, sizes, flags and the
// layout of its key and value. "" when they agree.
func objectDiff(t *testing.T, a, b []byte) string {
	t.Helper()
	sa, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(sa.Programs) != len(sb.Programs) || len(sa.Maps) != len(sb.Maps) {
		return fmt.Sprintf("%d programs and %d maps, fresh %d and %d", len(sa.Programs), len(sa.Maps), len(sb.Programs), len(sb.Maps))
	}
	for name, pa := range sa.Programs {
		pb, ok := sb.Programs[name]
		if !ok {
			return "program " + name + " missing from the fresh build"
		}
		if pa.Type != pb.Type || pa.AttachType != pb.AttachType || fmt.Sprint(pa.Instructions) != fmt.Sprint(pb.Instructions) {
			return "program " + name + " differs"
		}
	}
	for name, ma := range sa.Maps {
		mb, ok := sb.Maps[name]
		if !ok {
			return "map " + name + " missing from the fresh build"
		}
		if ma.Type != mb.Type || ma.KeySize != mb.KeySize || ma.ValueSize != mb.ValueSize || ma.MaxEntries != mb.MaxEntries ||
			ma.Flags != mb.Flags || maps.SpecLayout(ma) != maps.SpecLayout(mb) {
			return "map " + name + " differs"
		}
	}
	return ""
}

// bpf2goDirectives returns the arguments of every `go tool bpf2go` directive
// in gen.go, quotes resolved as go generate resolves them.
func bpf2goDirectives(t *testing.T) [][]string {
	t.Helper()
	f, err := os.Open("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const prefix = "//go:generate go tool bpf2go "
	var out [][]string
	s := bufio.NewScanner(f)
	for s.Scan() {
		if line, ok := strings.CutPrefix(s.Text(), prefix); ok {
			out = append(out, splitQuoted(t, line))
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// splitQuoted splits a directive's arguments at spaces, keeping a
// double-quoted argument whole (go generate's rule; no escapes are used).
func splitQuoted(t *testing.T, line string) []string {
	t.Helper()
	var args []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		if line[0] == '"' {
			end := strings.IndexByte(line[1:], '"')
			if end < 0 {
				t.Fatalf("unterminated quote in gen.go: %s", line)
			}
			args = append(args, line[1:end+1])
			line = line[end+2:]
			continue
		}
		arg, rest, _ := strings.Cut(line, " ")
		args = append(args, arg)
		line = rest
	}
	return args
}
