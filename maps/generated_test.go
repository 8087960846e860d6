package maps_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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

// The build is byte-reproducible (clang records only the relative source
// paths given on the command line, and bpf2go strips DWARF), so rebuilding
// with gen.go's own directives must give the committed files exactly. This
// catches a generated.sum refreshed without regenerating, or objects built
// by another compiler or with other flags.
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
		if !bytes.Equal(fresh, committed) {
			t.Errorf("%s differs from a fresh build (%d bytes, fresh %d): run `make generate` and commit the result",
				f.Name(), len(committed), len(fresh))
		}
	}
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
