package services_test

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// `service apply -f` reads every document of its file, and an input it
// refuses (empty, a document without services, an unknown field, a
// service twice, an invalid service in a later document) changes nothing:
// the pinned maps and the state directory are exactly as before. Only
// --allow-empty empties the node.
func TestCLIApplyRefusesBadInput(t *testing.T) {
	bin := buildPodpath(t)
	node, _ := newNode(t, "svcrefuse", "10.215.0.0/24")
	podpath := func(stdin string, args ...string) (string, error) {
		args = append([]string{"--pin-root", node.PinRoot, "--state-dir", node.StateDir, "service", "apply"}, args...)
		cmd := exec.Command(bin, args...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	dir := t.TempDir()
	file := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	const (
		web = "{namespace: shop, name: web, clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}], backends: [10.215.0.5]}"
		api = "{namespace: shop, name: api, clusterIP: 10.96.0.11, ports: [{port: 443}], backends: [10.215.0.6, 10.215.0.7], algorithm: maglev}"
		dns = "{namespace: kube-system, name: dns, clusterIP: 10.96.0.53, ports: [{port: 53, protocol: UDP}], backends: [10.215.0.8]}"
	)

	good := file("good.yaml", "# the node's services\n---\nservices:\n- "+web+"\n---\n- "+api+"\n---\n- "+dns+"\n")
	if out, err := podpath("", "-f", good); err != nil || !strings.Contains(out, "added kube-system/dns shop/api shop/web") {
		t.Fatalf("apply of three documents: %v\n%s", err, out)
	}
	before := nodeSnapshot(t, node.PinRoot, node.StateDir)
	if !strings.Contains(before, "maglev") || !strings.Contains(before, "state") {
		t.Fatalf("the snapshot misses maps or state:\n%s", before)
	}

	for _, tc := range []struct {
		name, content string
		args          []string
		want          string
	}{
		{name: "empty file", content: "", want: "no services in it"},
		{name: "whitespace", content: "\n  \n", want: "no services in it"},
		{name: "comments only", content: "# services: none yet\n", want: "no services in it"},
		{name: "null", content: "null\n", want: "no services in it"},
		{name: "empty object", content: "{}\n", want: "no services in it"},
		{name: "empty services", content: "services: []\n", want: "no services in it"},
		{name: "empty JSON stream", content: "{}\n{}\n", want: "document 1: no services"},
		{name: "empty, without pruning", content: "", args: []string{"--prune=false"}, want: "no services in it"},
		{name: "empty, dry run", content: "", args: []string{"--dry-run"}, want: "no services in it"},
		{name: "a document without services", content: "- " + web + "\n---\n{}\n---\n- " + dns + "\n", want: "document 2: no services"},
		{name: "an unknown field in the last document", content: "- " + web + "\n---\n- {name: x, clusterIP: 10.96.0.12, ports: [{port: 80}], colour: blue}\n",
			want: `document 2: json: unknown field "colour"`},
		{name: "a service in two documents", content: "- " + web + "\n---\n- " + api + "\n---\n- " + web + "\n",
			want: "document 3: service shop/web is defined twice (also in document 1)"},
		{name: "a service in two documents, without pruning", content: "- " + web + "\n---\n- " + web + "\n", args: []string{"--prune=false"},
			want: "service shop/web is defined twice"},
		{name: "an invalid service in a later document", content: "- " + web + "\n---\n- {name: bad, clusterIP: 10.96.0.13, ports: [{port: 0}]}\n",
			want: "ports[0].port: 0 out of range"},
		{name: "a frontend claimed twice across documents", content: "- " + web + "\n---\n- {name: web2, clusterIP: 10.96.0.10, ports: [{port: 80}]}\n",
			want: "frontend 10.96.0.10:80/TCP (clusterIP) is already service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := podpath("", append([]string{"-f", file("bad.yaml", tc.content)}, tc.args...)...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("apply: %v\n%s\nwant a refusal saying %q", err, out, tc.want)
			}
			if after := nodeSnapshot(t, node.PinRoot, node.StateDir); after != before {
				t.Fatalf("refused apply changed the node:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
	if out, err := podpath("", "-f", "-"); err == nil || !strings.Contains(out, "stdin: no services in it") {
		t.Fatalf("apply of an empty stdin: %v\n%s", err, out)
	}
	if after := nodeSnapshot(t, node.PinRoot, node.StateDir); after != before {
		t.Fatalf("refused apply from stdin changed the node:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	if out, err := podpath("", "-f", file("empty.yaml", ""), "--allow-empty"); err != nil || !strings.Contains(out, "removed kube-system/dns shop/api shop/web") {
		t.Fatalf("apply --allow-empty: %v\n%s", err, out)
	}
	if nodeSnapshot(t, node.PinRoot, node.StateDir) == before {
		t.Fatal("emptying the node left the snapshot as it was: the snapshot misses what apply writes")
	}
}

// nodeSnapshot is everything a service apply may write, as text: every
// entry of every map pinned under pinRoot (a map of maps with its inner
// maps' entries; per-CPU values for each CPU) and every file under
// stateDir with its contents.
func nodeSnapshot(t *testing.T, pinRoot, stateDir string) string {
	t.Helper()
	var b strings.Builder
	entries, err := os.ReadDir(pinRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue // programs and links
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinRoot, e.Name()), nil)
		if err != nil {
			t.Fatalf("open %s: %v", e.Name(), err)
		}
		if m.Type() == ebpf.RingBuf {
			m.Close()
			continue // events: no entries, and nothing the commands write
		}
		fmt.Fprintf(&b, "map %s\n", e.Name())
		err = dumpMap(&b, m, "  ")
		m.Close()
		if err != nil {
			t.Fatalf("dump %s: %v", e.Name(), err)
		}
	}
	files := map[string]string{}
	err = filepath.WalkDir(stateDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		content, err := os.ReadFile(path)
		files[path] = string(content)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range slices.Sorted(maps.Keys(files)) {
		fmt.Fprintf(&b, "state %s %q\n", path, files[path])
	}
	return b.String()
}

func dumpMap(b *strings.Builder, m *ebpf.Map, indent string) error {
	var (
		lines    []string
		key, val []byte
	)
	it := m.Iterate()
	switch m.Type() {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash:
		cpus, err := ebpf.PossibleCPU()
		if err != nil {
			return err
		}
		vals := make([][]byte, cpus)
		for it.Next(&key, vals) {
			lines = append(lines, fmt.Sprintf("%s%x: %x", indent, key, vals))
		}
	case ebpf.HashOfMaps, ebpf.ArrayOfMaps:
		for it.Next(&key, &val) {
			inner, err := ebpf.NewMapFromID(ebpf.MapID(binary.NativeEndian.Uint32(val)))
			if err != nil {
				return err
			}
			var sub strings.Builder
			err = dumpMap(&sub, inner, indent+"  ")
			inner.Close()
			if err != nil {
				return err
			}
			lines = append(lines, fmt.Sprintf("%s%x: map %x\n%s", indent, key, val, strings.TrimSuffix(sub.String(), "\n")))
		}
	default:
		for it.Next(&key, &val) {
			lines = append(lines, fmt.Sprintf("%s%x: %x", indent, key, val))
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Fprintln(b, l)
	}
	return it.Err()
}
