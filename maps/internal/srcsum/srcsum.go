// Package srcsum digests the BPF sources and the generate directives, so a
// test can tell whether the committed bpf2go output is stale.
package srcsum

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Dir returns a digest over every .c and .h file under dir and the extra
// files named (the go:generate directives), names and contents.
func Dir(dir string, extra ...string) (string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".c") || strings.HasSuffix(path, ".h")) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("walk %s: %w", dir, err)
	}
	sort.Strings(files)
	files = append(files, extra...)
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		name, err := filepath.Rel(dir, f)
		if err != nil || strings.HasPrefix(name, "..") {
			name = filepath.Base(f)
		}
		fmt.Fprintf(h, "%s\x00%d\x00", filepath.ToSlash(name), len(b))
		h.Write(b)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
