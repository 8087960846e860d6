package services_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/services"
)

// (g) A rolling update replaces every backend of a service, one at a time,
// as a Deployment does: start the new pod and add it, mark the old one
// terminating, give it time to finish, remove it, delete the pod. A
// client opening a new connection every 5 ms meanwhile sees not one
// failure, and connections opened before their backend turned terminating
// keep working until they are closed.
func TestRollingUpdate(t *testing.T) {
	node, m := newNode(t, "roll", "10.212.0.0/24")
	ctx := context.Background()
	client := addPod(t, node, "client")
	old := make([]*sim.Pod, 3)
	stops := make([]func(), 3)
	for i := range old {
		old[i] = addPod(t, node, fmt.Sprintf("v1-%d", i))
		stops[i] = serve(t, old[i])
	}
	current := backendsOf(old...)
	upsert := func() {
		t.Helper()
		if _, err := m.Upsert(ctx, webService(current...)); err != nil {
			t.Fatal(err)
		}
	}
	upsert()

	// Long-lived connections, opened before the update.
	var longLived []*conn
	for range 12 {
		c, err := dial(client, vipAddr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		longLived = append(longLived, c)
	}
	t.Cleanup(func() {
		for _, c := range longLived {
			c.Close()
		}
	})

	var (
		stop     atomic.Bool
		attempts atomic.Int64
		mu       sync.Mutex
		failures []string
		seen     = map[string]int{}
		wg       sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for !stop.Load() {
			<-tick.C
			n := attempts.Add(1)
			backend, _, err := request(client, vipAddr)
			mu.Lock()
			if err != nil {
				failures = append(failures, fmt.Sprintf("connection %d at %s: %v", n, time.Now().Format("15:04:05.000"), err))
			} else {
				seen[backend]++
			}
			mu.Unlock()
		}
	}()

	for i, o := range old {
		// New pod up and added.
		np := addPod(t, node, fmt.Sprintf("v2-%d", i))
		serve(t, np)
		current = append(current, backendsOf(np)[0])
		upsert()
		time.Sleep(100 * time.Millisecond)

		// Old one terminating: no new connections, the open ones work.
		j := slices.IndexFunc(current, func(b services.Backend) bool { return b.IP == o.IP })
		current[j].Terminating = true
		upsert()
		time.Sleep(200 * time.Millisecond)
		var mine []*conn
		for _, c := range longLived {
			if c.backend == o.Name {
				mine = append(mine, c)
			}
		}
		for _, c := range mine {
			if err := c.echo(fmt.Sprintf("still there %d", i)); err != nil {
				t.Errorf("connection to terminating %s: %v", o.Name, err)
			}
			c.Close()
		}
		t.Logf("%s terminating: %d connections opened before kept working until closed", o.Name, len(mine))

		// Gone: out of the service, then the pod.
		current = slices.Delete(current, j, j+1)
		upsert()
		time.Sleep(50 * time.Millisecond)
		stops[i]()
		if err := node.DelPod(ctx, o); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d connections during the update, answered by %v", attempts.Load(), seen)
	if len(failures) > 0 {
		t.Fatalf("%d of %d connections failed:\n%s", len(failures), attempts.Load(), failures)
	}
	if attempts.Load() < 200 {
		t.Fatalf("only %d connections during the update", attempts.Load())
	}
	for i := range old {
		if seen[fmt.Sprintf("v2-%d", i)] == 0 {
			t.Errorf("new backend v2-%d never answered", i)
		}
	}
	// Afterwards only new pods answer.
	for range 30 {
		backend, _, err := request(client, vipAddr)
		if err != nil || backend[:3] != "v2-" {
			t.Fatalf("after the update: %s, %v", backend, err)
		}
	}
	if drops := dropCounters(t, node); drops != "" {
		t.Errorf("drops:%s", drops)
	}
}
