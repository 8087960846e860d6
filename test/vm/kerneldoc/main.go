// Command kerneldoc writes docs/kernels.md from what scripts/vmtest.sh
// collected: the loader's feature probe (test/vm/probe) on the host and in
// each guest kernel, and the guest test runs as go tool test2json events.
// Nothing in the document is typed by hand.
//
//	kerneldoc -o docs/kernels.md -module M -host HOST/probe.json KERNELDIR...
//
// Each KERNELDIR holds probe.json, kernel.json (the runner's record of the
// Debian package) and tests/*.json.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/podpath/podpath/loader"
)

// probe is test/vm/probe's output line.
type probe struct {
	loader.Features
	TCMechanism string                 `json:"tcMechanism"`
	Programs    []loader.VerifierStats `json:"programs"`
	Error       string                 `json:"error"`
}

// kernelPackage is the runner's kernel.json.
type kernelPackage struct {
	Package string `json:"package"`
	Version string `json:"version"`
}

// event is one go tool test2json event.
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

type pkgResult struct {
	Package               string
	Passed, Failed, Skips int
	Outcome               string   // pass, fail, or "" when the binary never finished
	SkipReasons           []string // "TestX: why"
}

type kernelRun struct {
	Probe   probe
	From    kernelPackage
	Results []pkgResult
}

func main() {
	out := flag.String("o", "docs/kernels.md", "file to write")
	host := flag.String("host", "", "the host's probe.json")
	module := flag.String("module", "", "module path to strip from package names")
	notInVM := flag.String("not-in-vm", "", "what the guests do not run and why: a tab-separated line each")
	flag.Parse()
	if err := run(*out, *host, *module, *notInVM, flag.Args()); err != nil {
		fmt.Fprintf(os.Stderr, "kerneldoc: %v\n", err)
		os.Exit(1)
	}
}

func run(out, hostProbe, module, notInVM string, kernelDirs []string) error {
	var host *probe
	if hostProbe != "" {
		p, err := readProbe(hostProbe)
		if err != nil {
			return err
		}
		host = &p
	}
	var runs []kernelRun
	for _, dir := range kernelDirs {
		r, err := readKernelRun(dir)
		if err != nil {
			return err
		}
		for i := range r.Results {
			r.Results[i].Package = relPackage(r.Results[i].Package, module)
		}
		runs = append(runs, r)
	}
	var left [][2]string
	if notInVM != "" {
		b, err := os.ReadFile(notInVM)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if what, why, ok := strings.Cut(line, "\t"); ok {
				left = append(left, [2]string{what, why})
			}
		}
	}
	return os.WriteFile(out, render(host, runs, left), 0o644)
}

// relPackage names a package of the module by its directory in it.
func relPackage(pkg, module string) string {
	switch {
	case module == "":
		return pkg
	case pkg == module:
		return "."
	case strings.HasPrefix(pkg, module+"/"):
		return pkg[len(module)+1:]
	}
	return pkg
}

func readProbe(path string) (probe, error) {
	var p probe
	b, err := os.ReadFile(path)
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(bytes.TrimSpace(b), &p); err != nil {
		return p, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

func readKernelRun(dir string) (kernelRun, error) {
	var r kernelRun
	var err error
	if r.Probe, err = readProbe(filepath.Join(dir, "probe.json")); err != nil {
		return r, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kernel.json")); err == nil {
		json.Unmarshal(b, &r.From)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "tests", "*.json"))
	for _, f := range files {
		res, err := readTestRun(f)
		if err != nil {
			return r, err
		}
		r.Results = append(r.Results, res)
	}
	sort.Slice(r.Results, func(i, j int) bool { return r.Results[i].Package < r.Results[j].Package })
	return r, nil
}

// readTestRun counts top-level tests (subtests are part of their parent's
// verdict) and keeps each skip's message.
func readTestRun(path string) (pkgResult, error) {
	var res pkgResult
	f, err := os.Open(path)
	if err != nil {
		return res, err
	}
	defer f.Close()
	output := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if res.Package == "" {
			res.Package = e.Package
		}
		if e.Test == "" {
			if e.Action == "pass" || e.Action == "fail" {
				res.Outcome = e.Action
			}
			continue
		}
		if strings.Contains(e.Test, "/") {
			continue
		}
		switch e.Action {
		case "output":
			output[e.Test] = append(output[e.Test], e.Output)
		case "pass":
			res.Passed++
		case "fail":
			res.Failed++
		case "skip":
			res.Skips++
			res.SkipReasons = append(res.SkipReasons, e.Test+": "+skipMessage(output[e.Test]))
		}
	}
	return res, sc.Err()
}

// skipMessage is what t.Skip said: the indented "file.go:N: ..." lines.
func skipMessage(lines []string) string {
	var msg []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") || t == "" {
			continue
		}
		if _, rest, ok := strings.Cut(t, ".go:"); ok {
			if _, m, ok := strings.Cut(rest, ": "); ok {
				t = m
			}
		}
		msg = append(msg, t)
	}
	return strings.Join(msg, " ")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func mechanism(p probe) string {
	switch {
	case p.Error != "":
		return "probe failed: " + p.Error
	case p.TCMechanism == "tc":
		return "legacy tc (clsact + cls_bpf)"
	case p.TCMechanism == "tcx":
		return "tcx (bpf_link)"
	}
	return p.TCMechanism
}

// renderVerifier tabulates, program by program, the instructions each
// kernel's verifier walked (of its 1,000,000) when the program loaded.
func renderVerifier(w func(string, ...any), host *probe, runs []kernelRun) {
	var probes []probe
	if host != nil {
		probes = append(probes, *host)
	}
	for _, r := range runs {
		probes = append(probes, r.Probe)
	}
	cells := map[string]map[string]string{} // program -> kernel -> cell
	var programs []string
	for _, p := range probes {
		for _, v := range p.Programs {
			if cells[v.Program] == nil {
				cells[v.Program] = map[string]string{}
				programs = append(programs, v.Program)
			}
			cell := fmt.Sprintf("%s (%.1f%%)", thousands(v.Insns), float64(v.Insns)/10000)
			if v.Error != "" {
				cell = "rejected: " + strings.ReplaceAll(v.Error, "|", "/")
			}
			cells[v.Program][p.Kernel] = cell
		}
	}
	if len(programs) == 0 {
		return
	}
	sort.Strings(programs)
	w("\n## What the verifier walks\n\n")
	w("Instructions each kernel's verifier processed to load each program (`loader.Verify`), and\n")
	w("their share of its budget of 1,000,000. Older kernels prune less, so the same program costs\n")
	w("more there; the loader's tests fail any program over 10%% on the kernel they run on.\n\n")
	w("| program |")
	for _, p := range probes {
		w(" %s |", p.Kernel)
	}
	w("\n|---|")
	for range probes {
		w("---|")
	}
	w("\n")
	for _, prog := range programs {
		w("| %s |", prog)
		for _, p := range probes {
			c := cells[prog][p.Kernel]
			if c == "" {
				c = "not probed"
			}
			w(" %s |", c)
		}
		w("\n")
	}
}

// thousands writes n with comma separators: 671,330.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func socketLB(p probe) string {
	if p.NetnsCookie {
		return "offered"
	}
	return "not offered (cannot tell the node's sockets from pods')"
}

func render(host *probe, runs []kernelRun, notInVM [][2]string) []byte {
	var b bytes.Buffer
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# Kernels\n\n")
	w("Generated by `scripts/vmtest.sh` (test/vm/kerneldoc): the loader's own feature probe\n")
	w("(`loader.Probe`, printed by test/vm/probe) on the host and inside each Debian kernel booted\n")
	w("by test/vm/runner, and the outcome of the test binaries run there. Do not edit by hand.\n\n")

	w("## Features and the mechanism the loader picks\n\n")
	w("| kernel | where | tcx | bpf_redirect_peer | bpf_redirect_neigh | LRU hash | ring buffer | SO_NETNS_COOKIE | VXLAN encapsulation by from_pod | FIB lookup without the neighbour | tc programs attach with | socket LB |\n")
	w("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	row := func(p probe, where string) {
		w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p.Kernel, where, yesNo(p.TCX),
			yesNo(p.RedirectPeer), yesNo(p.RedirectNeigh), yesNo(p.LRUHash), yesNo(p.RingBuf),
			yesNo(p.NetnsCookie), yesNo(p.OverlayEncap), yesNo(p.FIBSkipNeigh), mechanism(p), socketLB(p))
	}
	if host != nil {
		row(*host, "host")
	}
	for _, r := range runs {
		where := "qemu"
		if r.From.Package != "" {
			where = fmt.Sprintf("qemu, Debian %s %s", r.From.Package, r.From.Version)
		}
		if len(r.Results) == 0 {
			where += "; probed only, tests not run"
		}
		row(r.Probe, where)
	}

	renderVerifier(w, host, runs)

	tested := 0
	for _, r := range runs {
		tested += len(r.Results)
	}
	if tested == 0 {
		return b.Bytes()
	}
	w("\n## Tests in each guest kernel\n\n")
	w("Top-level tests; a package whose binary did not finish shows as `did not finish`.\n\n")
	w("| kernel | package | passed | failed | skipped | result |\n")
	w("|---|---|---|---|---|---|\n")
	for _, r := range runs {
		for _, res := range r.Results {
			outcome := map[string]string{"pass": "ok", "fail": "FAIL", "": "did not finish"}[res.Outcome]
			w("| %s | %s | %d | %d | %d | %s |\n", r.Probe.Kernel, res.Package, res.Passed, res.Failed, res.Skips, outcome)
		}
	}
	if len(notInVM) > 0 {
		w("\n### Not run in the guests\n\n")
		w("The host runs these (`make test`); the guests leave them out:\n\n")
		for _, l := range notInVM {
			w("- %s: %s\n", l[0], l[1])
		}
	}
	for _, r := range runs {
		var skips []string
		for _, res := range r.Results {
			for _, s := range res.SkipReasons {
				skips = append(skips, fmt.Sprintf("- %s %s", res.Package, s))
			}
		}
		if len(skips) == 0 {
			continue
		}
		w("\n### Skipped on %s, in the tests' words\n\n", r.Probe.Kernel)
		w("%s\n", strings.Join(skips, "\n"))
	}
	return b.Bytes()
}
