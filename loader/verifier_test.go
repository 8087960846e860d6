package loader_test

import (
	"testing"

	"github.com/podpath/podpath/loader"
)

// verifierHeadroom is the share of the verifier's budget one program may
// use. Kernels differ in how well they prune (the same program can cost
// several times more on an older one), so a program close to the limit
// here fails to load on a kernel somewhere; well under it leaves room.
const verifierHeadroom = 10 // percent

// Every program loads on this kernel and uses at most verifierHeadroom% of
// the verifier's budget.
func TestVerifierBudget(t *testing.T) {
	stats, err := loader.Verify()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"from_netdev", "from_netdev (overlay)", "from_overlay", "from_pod", "from_pod (overlay)", "sock_connect4", "sock_getpeername4",
		"sock_recvmsg4", "sock_sendmsg4", "to_netdev", "to_netdev (overlay)", "to_overlay", "to_pod", "xdp_netdev"}
	if len(stats) != len(want) {
		t.Errorf("verified %d programs, want %d (%v)", len(stats), len(want), want)
	}
	limit := loader.VerifierBudget * verifierHeadroom / 100
	for i, s := range stats {
		if i < len(want) && s.Program != want[i] {
			t.Errorf("program %d is %s, want %s", i, s.Program, want[i])
		}
		switch {
		case s.Error != "":
			t.Errorf("%s: %s", s.Program, s.Error)
		case s.Insns > limit:
			t.Errorf("%s: the verifier walked %d instructions, over %d%% of its budget (%d)",
				s.Program, s.Insns, verifierHeadroom, limit)
		default:
			t.Logf("%-18s %7d insns %5d states %8.1f ms", s.Program, s.Insns, s.States, s.LoadMs)
		}
	}
}

// The dry run's objects (podpath trace) load on this kernel too: they carry
// more state than the node's (the trace log), so their stack is the one to
// run out first.
func TestVerifierDryRun(t *testing.T) {
	stats, err := loader.VerifyDryRun()
	if err != nil {
		t.Fatal(err)
	}
	if len(stats) < 7 {
		t.Errorf("verified %d dry-run programs, want every tc and XDP program", len(stats))
	}
	for _, s := range stats {
		if s.Error != "" {
			t.Errorf("%s (dry run): %s", s.Program, s.Error)
			continue
		}
		t.Logf("%-18s %7d insns (dry run)", s.Program, s.Insns)
	}
}
