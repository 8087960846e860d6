package services_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/services"
)

// buildPodpath builds the CLI into a temporary directory.
func buildPodpath(t *testing.T) string {
	t.Helper()
	bin, err := sim.BuildPodpath(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// The CLI drives the same manager: add, list, get, apply from a YAML file
// (declarative, pruning), conntrack list and flush, delete; traffic follows.
func TestCLI(t *testing.T) {
	bin := buildPodpath(t)
	node, _ := newNode(t, "svccli", "10.214.0.0/24")
	b1, b2 := addPod(t, node, "b1"), addPod(t, node, "b2")
	serve(t, b1)
	serve(t, b2)
	client := addPod(t, node, "client")
	run := func(args ...string) string {
		t.Helper()
		args = append([]string{"--pin-root", node.PinRoot, "--state-dir", node.StateDir}, args...)
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("podpath %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	fail := func(want string, args ...string) {
		t.Helper()
		args = append([]string{"--pin-root", node.PinRoot, "--state-dir", node.StateDir}, args...)
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Fatalf("podpath %s: %v\n%s\nwant a failure saying %q", strings.Join(args, " "), err, out, want)
		}
	}

	out := run("service", "add", "web", "-n", "cli", "--cluster-ip", "10.96.0.10", "--port", "80:8080/tcp",
		"--backend", b1.IP.String(), "--backend", b2.IP.String(), "--algorithm", "round-robin")
	if !strings.Contains(out, "added cli/web") {
		t.Fatalf("add: %s", out)
	}
	fail("service exists: cli/web (use --replace", "service", "add", "web", "-n", "cli", "--cluster-ip", "10.96.0.10", "--port", "80:8080")
	fail("ports[0].port: 0 out of range", "service", "add", "bad", "--cluster-ip", "10.96.0.11", "--port", "0")
	for range 10 {
		if _, _, err := request(client, vipAddr); err != nil {
			t.Fatal(err)
		}
	}
	var list []services.Service
	if err := json.Unmarshal([]byte(run("service", "list", "-o", "json")), &list); err != nil || len(list) != 1 || len(list[0].Backends) != 2 {
		t.Fatalf("list: %+v %v", list, err)
	}
	if out := run("service", "get", "cli/web"); !strings.Contains(out, "10.96.0.10:80/TCP") || !strings.Contains(out, b1.IP.String()+":8080#") {
		t.Fatalf("get:\n%s", out)
	}

	var flows []services.Flow
	if err := json.Unmarshal([]byte(run("ct", "list", "--service", "cli/web", "-o", "json")), &flows); err != nil || len(flows) != 20 {
		t.Fatalf("ct list: %d flows (%v), want 20 (10 connections, two directions)", len(flows), err)
	}
	one, two := run("ct", "list", "--backend", b1.IP.String()+":8080"), run("ct", "list", "--backend", b2.IP.String()+":8080")
	if n1, n2 := strings.Count(one, "\n")-1, strings.Count(two, "\n")-1; n1+n2 != 20 || n1 == 0 || n2 == 0 {
		t.Fatalf("ct list --backend: %d and %d entries, want 20 in all, some for each:\n%s%s", n1, n2, one, two)
	}
	if out := run("ct", "flush", "--service", "cli/web"); !strings.Contains(out, "20 conntrack entries flushed") {
		t.Fatalf("ct flush: %s", out)
	}
	run("ct", "gc")

	// Declarative: the file has web with one backend and a new service;
	// anything else would be removed.
	file := filepath.Join(t.TempDir(), "services.yaml")
	yaml := `
services:
- namespace: cli
  name: web
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 8080}]
  backends: [` + b2.IP.String() + `]
- namespace: cli
  name: web2
  clusterIP: 10.96.0.20
  ports: [{port: 80, targetPort: 8080}]
  backends: [` + b1.IP.String() + `]
`
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := run("service", "apply", "-f", file, "--dry-run"); !strings.Contains(out, "dry run") || !strings.Contains(out, "added cli/web2; updated cli/web") {
		t.Fatalf("dry run: %s", out)
	}
	run("service", "apply", "-f", file)
	for range 5 {
		if backend, _, err := request(client, vipAddr); err != nil || backend != "b2" {
			t.Fatalf("after apply: %s %v", backend, err)
		}
		if backend, _, err := request(client, "10.96.0.20:80"); err != nil || backend != "b1" {
			t.Fatalf("after apply: %s %v", backend, err)
		}
	}
	if out := run("service", "apply", "-f", file); !strings.Contains(out, "2 unchanged; 0 map entries written") {
		t.Fatalf("second apply: %s", out)
	}
	if err := os.WriteFile(file, []byte("[{name: x, clusterIP: 10.96.0.30, ports: [{port: 80}], colour: blue}]"), 0o600); err != nil {
		t.Fatal(err)
	}
	fail(`unknown field "colour"`, "service", "apply", "-f", file)

	run("service", "delete", "cli/web")
	run("service", "delete", "cli/web2")
	if c, err := dial(client, vipAddr, 500*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("deleted service answers")
	}
}
