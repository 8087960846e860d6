package maps_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/podpath/podpath/maps"
)

// bpftool, the tool an operator reaches for, shows the pinned maps with
// their C field names and reads the values user space wrote: the maps carry
// BTF, and it matches what the Go side writes.
func TestBpftoolShowsMapFields(t *testing.T) {
	bpftool := lookBpftool(t)
	n := newNode(t)
	n.mustInit(t)

	ip := netip.MustParseAddr("10.244.1.10")
	entry := maps.EndpointInfo{
		Ifindex:     10,
		Mac:         [6]uint8{0x02, 0, 0x0a, 0xf4, 0x01, 0x0a},
		NodeMac:     [6]uint8{0xee, 0xee, 0, 0, 0, 0x0a},
		NetnsCookie: 0x1234,
	}
	if err := maps.NewEndpoints(n.openMap(t, maps.MapEndpoints)).Put(ip, entry); err != nil {
		t.Fatal(err)
	}
	runPinnedFromPod(t, n.root) // one 60-byte frame counted as drop_unsupported_l3

	dump := func(name string, args ...string) []byte {
		t.Helper()
		return bpftoolRun(t, bpftool, append(args, "map", "dump", "pinned", maps.MapPath(n.root, name))...)
	}

	// What an operator reads.
	for name, fields := range map[string][]string{
		maps.MapEndpoints: {"family", "addr", "ifindex", "flags", "mac", "node_mac", "netns_cookie"},
		maps.MapCounters:  {"reason", "hook", "packets", "bytes"},
	} {
		out := string(dump(name))
		for _, f := range fields {
			if !strings.Contains(out, `"`+f+`": `) {
				t.Errorf("bpftool map dump %s shows no field %q:\n%s", name, f, out)
			}
		}
	}

	// And the values behind the names, from bpftool's JSON.
	var endpoints []struct {
		Formatted struct {
			Key struct {
				Family uint8     `json:"family"`
				Addr   [4]uint32 `json:"addr"`
			} `json:"key"`
			Value struct {
				Ifindex     uint32  `json:"ifindex"`
				Mac         []uint8 `json:"mac"`
				NodeMac     []uint8 `json:"node_mac"`
				NetnsCookie uint64  `json:"netns_cookie"`
			} `json:"value"`
		} `json:"formatted"`
	}
	if err := json.Unmarshal(dump(maps.MapEndpoints, "-j"), &endpoints); err != nil {
		t.Fatal(err)
	}
	if len(endpoints) != 1 {
		t.Fatalf("bpftool shows %d endpoints, want 1", len(endpoints))
	}
	ep := endpoints[0].Formatted
	var addr [4]byte
	binary.NativeEndian.PutUint32(addr[:], ep.Key.Addr[0])
	if ep.Key.Family != maps.FamilyIPv4 || netip.AddrFrom4(addr) != ip {
		t.Errorf("bpftool key: family %d, addr %v; want %d, %s", ep.Key.Family, addr, maps.FamilyIPv4, ip)
	}
	if ep.Value.Ifindex != entry.Ifindex || !slices.Equal(ep.Value.Mac, entry.Mac[:]) ||
		!slices.Equal(ep.Value.NodeMac, entry.NodeMac[:]) || ep.Value.NetnsCookie != entry.NetnsCookie {
		t.Errorf("bpftool value: %+v, want %+v", ep.Value, entry)
	}

	var counters []struct {
		Formatted struct {
			Key struct {
				Reason uint16 `json:"reason"`
				Hook   uint8  `json:"hook"`
			} `json:"key"`
			Values []struct {
				Value struct {
					Packets uint64 `json:"packets"`
					Bytes   uint64 `json:"bytes"`
				} `json:"value"`
			} `json:"values"`
		} `json:"formatted"`
	}
	if err := json.Unmarshal(dump(maps.MapCounters, "-j"), &counters); err != nil {
		t.Fatal(err)
	}
	if len(counters) != 1 {
		t.Fatalf("bpftool shows %d counters, want 1", len(counters))
	}
	c := counters[0].Formatted
	var packets, bytes uint64
	for _, v := range c.Values {
		packets += v.Value.Packets
		bytes += v.Value.Bytes
	}
	if r, h := maps.Reason(c.Key.Reason), maps.Hook(c.Key.Hook); r.String() != "drop_unsupported_l3" || h.String() != "from_pod" ||
		packets != 1 || bytes != 60 {
		t.Errorf("bpftool counter: %s/%s %d packets %d bytes; want from_pod/drop_unsupported_l3 1 packet 60 bytes",
			h, r, packets, bytes)
	}
}

// lookBpftool finds bpftool or fails the test.
func lookBpftool(t *testing.T) string {
	t.Helper()
	bpftool, err := exec.LookPath("bpftool")
	if err != nil {
		t.Fatal("bpftool not found: scripts/install-deps.sh installs it (make deps)")
	}
	return bpftool
}

// bpftoolRun runs bpftool with args and returns what it printed on stdout.
func bpftoolRun(t *testing.T, bpftool string, args ...string) []byte {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(bpftool, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bpftool %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}
