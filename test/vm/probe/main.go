// Command probe prints, as one JSON line, what the loader finds the running
// kernel offers (loader.Probe), the tc attach mechanism it picks there, and
// what the kernel's verifier makes of each BPF program podpath ships
// (loader.Verify). scripts/vmtest.sh runs it on the host and in each guest
// kernel, and test/vm/kerneldoc turns the lines into docs/kernels.md. Needs
// root.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/podpath/podpath/loader"
)

// Result is one kernel's probe. The fields of loader.Features appear at the
// top level.
type Result struct {
	loader.Features
	TCMechanism string                 `json:"tcMechanism"`
	Programs    []loader.VerifierStats `json:"programs"`
	Error       string                 `json:"error,omitempty"`
}

func main() {
	f, err := loader.Probe()
	r := Result{Features: f, TCMechanism: f.TCMechanism()}
	if err == nil {
		r.Programs, err = loader.Verify()
	}
	if err != nil {
		r.Error = err.Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	failed := r.Error != ""
	if failed {
		fmt.Fprintf(os.Stderr, "probe: %s\n", r.Error)
	}
	for _, p := range r.Programs {
		if p.Error != "" {
			fmt.Fprintf(os.Stderr, "probe: %s: %s\n", p.Program, p.Error)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
