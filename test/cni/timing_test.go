package cni_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/podpath/podpath/cni"
)

// With PODPATH_CNI_TIMINGS set, ADD and DEL each append one line naming
// their steps in order, each with its time, and the total covers the steps.
func TestTimingsWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "timings.jsonl")
	t.Setenv(cni.TimingsEnv, path)
	n := newNode(t, "timings", "10.77.9.0/24")
	p := addPod(t, n, "a")
	if err := libcniDel(t, n, p.RuntimeConf()); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) != 2 {
		t.Fatalf("%d lines, want one for ADD and one for DEL:\n%s", len(lines), b)
	}
	want := map[string][]string{
		"ADD": {"parse", "open_datapath", "lock", "allocate", "veth", "pod_interface", "endpoint", "attach", "hostports"},
		"DEL": {"open_datapath", "lock", "find_address", "remove", "release"},
	}
	for i, cmd := range []string{"ADD", "DEL"} {
		var tm cni.Timing
		if err := json.Unmarshal(lines[i], &tm); err != nil {
			t.Fatalf("line %d: %v: %s", i+1, err, lines[i])
		}
		if tm.Command != cmd || tm.Container != p.ContainerID || tm.Failed {
			t.Errorf("line %d: %s of %s (failed %v), want %s of %s", i+1, tm.Command, tm.Container, tm.Failed, cmd, p.ContainerID)
		}
		var names []string
		var sum float64
		for _, s := range tm.Steps {
			names = append(names, s.Name)
			if s.US < 0 {
				t.Errorf("%s step %s: %v us", cmd, s.Name, s.US)
			}
			sum += s.US
		}
		if !slices.Equal(names, want[cmd]) {
			t.Errorf("%s steps %v, want %v", cmd, names, want[cmd])
		}
		if sum <= 0 || sum > tm.TotalUS {
			t.Errorf("%s: steps add up to %.0f us, total %.0f us", cmd, sum, tm.TotalUS)
		}
	}
}
