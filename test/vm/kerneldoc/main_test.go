package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// test2json events as `go tool test2json -p loader` writes them for a
// -test.v log with a pass, a skip with a message, a failing subtest and a
// package failure.
const loaderEvents = `{"Action":"start","Package":"loader"}
{"Action":"run","Package":"loader","Test":"TestA"}
{"Action":"output","Package":"loader","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"loader","Test":"TestA","Output":"--- PASS: TestA (0.01s)\n"}
{"Action":"pass","Package":"loader","Test":"TestA","Elapsed":0.01}
{"Action":"run","Package":"loader","Test":"TestReplaceInPlaceTCX"}
{"Action":"output","Package":"loader","Test":"TestReplaceInPlaceTCX","Output":"=== RUN   TestReplaceInPlaceTCX\n"}
{"Action":"output","Package":"loader","Test":"TestReplaceInPlaceTCX","Output":"    loader_test.go:171: kernel 6.1.0-56-amd64 has no tcx\n"}
{"Action":"output","Package":"loader","Test":"TestReplaceInPlaceTCX","Output":"--- SKIP: TestReplaceInPlaceTCX (0.06s)\n"}
{"Action":"skip","Package":"loader","Test":"TestReplaceInPlaceTCX","Elapsed":0.06}
{"Action":"run","Package":"loader","Test":"TestB"}
{"Action":"run","Package":"loader","Test":"TestB/sub"}
{"Action":"fail","Package":"loader","Test":"TestB/sub","Elapsed":0}
{"Action":"fail","Package":"loader","Test":"TestB","Elapsed":0}
{"Action":"fail","Package":"loader","Elapsed":0.2}
`

func TestRender(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tests"), 0o755)
	os.WriteFile(filepath.Join(dir, "probe.json"), []byte(`{"kernel":"6.1.0-56-amd64","tcx":false,"redirectPeer":true,"redirectNeigh":true,"lruHash":true,"ringBuf":true,"netnsCookie":true,"overlayEncap":true,"tcMechanism":"tc","programs":[{"program":"to_netdev","insns":671330,"states":12418},{"program":"from_pod","insns":0,"error":"load program: permission denied"}]}`+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "kernel.json"), []byte(`{"package":"linux-image-6.1.0-56-amd64-unsigned","version":"6.1.192-2"}`), 0o644)
	os.WriteFile(filepath.Join(dir, "tests", "loader.json"), []byte(loaderEvents), 0o644)
	host := filepath.Join(dir, "host.json")
	os.WriteFile(host, []byte(`{"kernel":"6.18.44","tcx":true,"redirectPeer":true,"redirectNeigh":true,"lruHash":true,"ringBuf":true,"netnsCookie":true,"overlayEncap":true,"fibSkipNeigh":true,"tcMechanism":"tcx","programs":[{"program":"to_netdev","insns":8510,"states":291}]}`), 0o644)
	out := filepath.Join(dir, "kernels.md")
	notInVM := filepath.Join(dir, "not-in-vm.tsv")
	os.WriteFile(notInVM, []byte("package test/runtime\ttoo heavy\nTestGeneratedReproducible\tthe compiler's output\n"), 0o644)
	if err := run(out, host, "", notInVM, []string{dir}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, want := range []string{
		"| 6.18.44 | host | yes | yes | yes | yes | yes | yes | yes | yes | tcx (bpf_link) | offered |",
		"| 6.1.0-56-amd64 | qemu, Debian linux-image-6.1.0-56-amd64-unsigned 6.1.192-2 | no | yes | yes | yes | yes | yes | yes | no | legacy tc (clsact + cls_bpf) | offered |",
		"| 6.1.0-56-amd64 | loader | 1 | 1 | 1 | FAIL |",
		"- loader TestReplaceInPlaceTCX: kernel 6.1.0-56-amd64 has no tcx",
		"| program | 6.18.44 | 6.1.0-56-amd64 |",
		"| from_pod | not probed | rejected: load program: permission denied |",
		"| to_netdev | 8,510 (0.9%) | 671,330 (67.1%) |",
		"- package test/runtime: too heavy\n- TestGeneratedReproducible: the compiler's output\n",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("missing %q in\n%s", want, doc)
		}
	}
}
