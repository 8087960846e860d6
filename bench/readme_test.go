package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// The README's benchmark table is what the bench writes from the latest
// full run in bench/results: a hand-edited figure, or a run whose table
// was not written, fails here.
func TestReadmeTableIsTheLatestRun(t *testing.T) {
	b, err := os.ReadFile("results/latest.json")
	if err != nil {
		t.Fatal(err)
	}
	var r results
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Config.Mode != "full" {
		t.Fatalf("bench/results/latest.json is a %s run; the README quotes a full one", r.Config.Mode)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want, err := withReadmeTable(readme, readmeTable(&r))
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != string(readme) {
		t.Fatalf("README.md's bench table is not the one bench/results/latest.json gives (go run ./bench -render bench/results writes it); want:\n%s", readmeTable(&r))
	}
}

// Rows whose contenders the run lacks are left out; the markers are
// required.
func TestReadmeTableRows(t *testing.T) {
	r := &results{Config: config{Mode: "full"}}
	r.record(famStream, "throughput", cPodpath, "Gbit/s", higher, 10)
	r.record(famStream, "throughput", cLimit, "Gbit/s", higher, 11)
	table := readmeTable(r)
	if !strings.Contains(table, "| pod-to-pod TCP throughput vs a bare veth pair | 10.00 Gbit/s | 11.00 Gbit/s | 0.91x (0.91-0.91) | worse |") {
		t.Errorf("table:\n%s", table)
	}
	if strings.Contains(table, "bridge") {
		t.Errorf("a row without its peer:\n%s", table)
	}
	if _, err := withReadmeTable([]byte("no markers"), table); err == nil {
		t.Error("a README without markers accepted")
	}
}
