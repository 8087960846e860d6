package cni_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/podpath/podpath/internal/sim"
)

// 50 plugin processes adding pods at once get 50 distinct addresses from the
// flock'ed pool, and 50 deleting them at once leave nothing behind.
func TestConcurrentAddDel(t *testing.T) {
	const count = 50
	n := newNode(t, "parallel", "10.77.8.0/24")
	ctx := testContext(t)

	pods := make([]*sim.Pod, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() { pods[i], errs[i] = n.AddPod(ctx, fmt.Sprintf("p%02d", i)) })
	}
	wg.Wait()
	seen := map[string]string{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD p%02d: %v", i, err)
		}
		ip := pods[i].IP.String()
		if prev, dup := seen[ip]; dup {
			t.Fatalf("%s given to both %s and %s", ip, prev, pods[i].Name)
		}
		seen[ip] = pods[i].Name
	}
	if a := allocations(t, n); len(a) != count {
		t.Fatalf("%d address files, want %d", len(a), count)
	}
	if eps := endpoints(t, n); len(eps) != count {
		t.Fatalf("%d endpoints, want %d", len(eps), count)
	}
	if v := hostVeths(t, n); len(v) != count {
		t.Fatalf("%d host veths, want %d", len(v), count)
	}
	// A few pairs talk, to show the pods are really wired.
	tcpExchange(t, pods[0], pods[count-1])
	udpExchange(t, pods[count/2], pods[1])

	for i := range count {
		wg.Go(func() { errs[i] = n.DelPod(ctx, pods[i]) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL p%02d: %v", i, err)
		}
	}
	if a := allocations(t, n); len(a) != 0 {
		t.Errorf("address files left: %v", a)
	}
	if eps := endpoints(t, n); len(eps) != 0 {
		t.Errorf("endpoints left: %v", eps)
	}
	if v := hostVeths(t, n); len(v) != 0 {
		t.Errorf("host veths left: %v", v)
	}
	if p := attachedVeths(t, n); len(p) != 0 {
		t.Errorf("attachments left: %v", p)
	}
}
