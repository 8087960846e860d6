package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/podpath/podpath/maps"
)

// podpath network add, list and delete, through the binary on a node of
// its own: what add writes, list shows with names, ids and reaches, and
// delete takes it away; a bad name is refused with the reason.
func TestNetworkCommands(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads the datapath into a network namespace")
	}
	podpath, _ := cliNode(t, "netcmd")
	if out, err := podpath("node", "init", "--pod-cidr", "10.97.0.0/24", "--no-snat"); err != nil {
		t.Fatalf("node init: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"network", "add", "blue", "--reaches", "red,green"},
		{"network", "add", "red"},
		{"network", "add", "open", "--reaches", "*"},
		{"network", "add", "blue", "--reaches", "red"}, // replaces blue's reaches
	} {
		if out, err := podpath(args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	out, err := podpath("network", "list", "-o", "json")
	if err != nil {
		t.Fatalf("network list: %v\n%s", err, out)
	}
	var rows []networkRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("network list -o json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, r := range rows {
		if r.ID != maps.NetworkID(r.Name) {
			t.Errorf("network %s: id %d, want %d", r.Name, r.ID, maps.NetworkID(r.Name))
		}
		got[r.Name] = maps.FormatReaches(r.Reaches)
	}
	want := map[string]string{"blue": "red", "red": "-", "open": "*"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("network list: %v, want %v\n%s", got, want, out)
	}
	if out, err := podpath("network", "list"); err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "blue") {
		t.Errorf("network list (table): %v\n%s", err, out)
	}
	if out, err := podpath("network", "delete", "blue"); err != nil {
		t.Fatalf("network delete: %v\n%s", err, out)
	}
	if out, _ := podpath("network", "list"); strings.Contains(out, "blue") {
		t.Errorf("blue still listed after delete:\n%s", out)
	}
	if out, err := podpath("network", "add", strings.Repeat("x", 60)); err == nil || !strings.Contains(out, "longer than 59 bytes") {
		t.Errorf("a 60-byte name: %v\n%s; want a refusal naming the limit", err, out)
	}
}
