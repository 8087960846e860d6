package cni

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// Values the network leaves out come from the node's node.json; those it
// sets win.
func TestParseConfigDefaultsFromNode(t *testing.T) {
	dir := t.TempDir()
	node := `{"pinRoot":"/sys/fs/bpf/podpath-x","stateDir":"` + dir + `","podCIDR":"10.8.0.0/24","gateway":"169.254.1.1","mtu":9000,"maxEndpoints":1024}`
	if err := os.WriteFile(filepath.Join(dir, "node.json"), []byte(node), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"n","type":"podpath-cni","stateDir":"`+dir+`"}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if c.PinRoot != "/sys/fs/bpf/podpath-x" || c.PodCIDR.String() != "10.8.0.0/24" || c.MTU != 9000 || c.Gateway.String() != "169.254.1.1" {
		t.Fatalf("config %+v", c)
	}
	c, err = ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"n","stateDir":"`+dir+`","podCIDR":"10.8.1.0/26","mtu":1400,"pinRoot":"/sys/fs/bpf/y"}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if c.PinRoot != "/sys/fs/bpf/y" || c.PodCIDR.String() != "10.8.1.0/26" || c.MTU != 1400 {
		t.Fatalf("config %+v", c)
	}
}

// Without node.json, ADD needs a podCIDR and says the node is not set up;
// DEL does not.
func TestParseConfigWithoutNode(t *testing.T) {
	dir := t.TempDir()
	conf := []byte(`{"cniVersion":"1.1.0","name":"n","stateDir":"` + dir + `"}`)
	_, err := ParseConfig(conf, true)
	var e *types.Error
	if !errors.As(err, &e) || e.Code != CodeDatapathNotLoaded {
		t.Fatalf("ADD config without a node: %v", err)
	}
	c, err := ParseConfig(conf, false)
	if err != nil {
		t.Fatal(err)
	}
	if c.PinRoot != "/sys/fs/bpf/podpath" || c.MTU != 1500 {
		t.Fatalf("defaults %+v", c)
	}
}

// reaches names networks, or "*" for all; an empty or over-long name, and
// a network name the networks map cannot hold, are invalid configuration.
func TestParseConfigReaches(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("x", 60)
	conf := func(name, reaches string) []byte {
		return []byte(`{"cniVersion":"1.1.0","name":"` + name + `","podCIDR":"10.8.0.0/24","stateDir":"` + dir + `","reaches":` + reaches + `}`)
	}
	c, err := ParseConfig(conf("blue", `["red","*"]`), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Reaches) != 2 || c.Reaches[0] != "red" || c.Reaches[1] != "*" {
		t.Fatalf("reaches %v, want [red *]", c.Reaches)
	}
	for _, bad := range [][]byte{
		conf("blue", `[""]`),
		conf("blue", `["`+long+`"]`),
		conf(long, `[]`),
		conf("blue", `"red"`),
	} {
		_, err := ParseConfig(bad, true)
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
			t.Errorf("config %s: %v, want an invalid network configuration error", bad, err)
		}
	}
}
