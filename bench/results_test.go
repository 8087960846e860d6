package main

import (
	"errors"
	"strings"
	"testing"
)

// A failed repetition leaves its round out of the paired ratios (the
// others stay paired by round), is listed with its error, and a
// measurement with more than a third of its repetitions failed is shown
// as unreliable and compared with nothing.
func TestFailedRepetitions(t *testing.T) {
	r := &results{}
	for rep, v := range []float64{100, 200, 300, 400} {
		r.record(famStream, "throughput", "a", "/s", higher, v)
		if rep == 1 {
			r.recordFailure(famStream, "b", "/s", higher, errors.New("path counter did not rise"), "throughput")
			continue
		}
		r.record(famStream, "throughput", "b", "/s", higher, v/2)
	}
	a, b := r.find(famStream, "throughput", "a"), r.find(famStream, "throughput", "b")
	p, ok := paired(a, b)
	if !ok || p.N != 3 || p.Min != 2 || p.Max != 2 {
		t.Fatalf("paired over rounds 1, 3, 4: %+v %v, want 3 ratios of 2", p, ok)
	}
	if b.unreliable() || !b.trusted() {
		t.Fatalf("1 of 4 failed: unreliable")
	}
	r.recordFailure(famStream, "b", "/s", higher, errors.New("again"), "throughput")
	if !b.unreliable() || b.trusted() {
		t.Fatalf("2 of 5 failed: still trusted")
	}
	if _, ok := paired(a, b); ok {
		t.Fatal("an unreliable measurement was compared")
	}
	md := summary(r)
	for _, want := range []string{"unreliable: 2 of 5 repetitions failed", famStream + " throughput b, repetition 2: path counter did not rise", famStream + " throughput b, repetition 5: again"} {
		if !strings.Contains(md, want) {
			t.Errorf("summary lacks %q:\n%s", want, md)
		}
	}
}
