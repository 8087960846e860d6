package maps_test

import (
	"encoding/binary"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/podpath/podpath/maps"
)

func TestEndpointKeyRoundTrip(t *testing.T) {
	tests := []struct {
		addr   string
		family uint8
		want   string // what IP() gives back
	}{
		{"10.244.1.10", maps.FamilyIPv4, "10.244.1.10"},
		{"0.0.0.0", maps.FamilyIPv4, "0.0.0.0"},
		{"255.255.255.255", maps.FamilyIPv4, "255.255.255.255"},
		{"fd00:10:244:1::a", maps.FamilyIPv6, "fd00:10:244:1::a"},
		{"2001:db8::ff00:42:8329", maps.FamilyIPv6, "2001:db8::ff00:42:8329"},
		{"::", maps.FamilyIPv6, "::"},
		// An IPv4-mapped IPv6 address is the IPv4 pod it maps.
		{"::ffff:10.244.1.10", maps.FamilyIPv4, "10.244.1.10"},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			addr := netip.MustParseAddr(tc.addr)
			k := maps.NewEndpointKey(addr)
			if k.Family != tc.family {
				t.Errorf("family %d, want %d", k.Family, tc.family)
			}
			if got := k.IP(); got != netip.MustParseAddr(tc.want) {
				t.Errorf("IP() = %s, want %s", got, tc.want)
			}
			// The datapath compares addr with the packet's bytes: they must
			// be in network order in memory, IPv4 in addr[0], the rest zero.
			var mem [16]byte
			for i, w := range k.Addr {
				binary.NativeEndian.PutUint32(mem[i*4:], w)
			}
			want := netip.MustParseAddr(tc.want)
			var wantMem [16]byte
			if want.Is4() {
				b := want.As4()
				copy(wantMem[:], b[:])
			} else {
				wantMem = want.As16()
			}
			if mem != wantMem {
				t.Errorf("addr in memory % x, want % x", mem, wantMem)
			}
			if k.Pad != [3]uint8{} {
				t.Errorf("padding % x, want zero (keys are compared byte for byte)", k.Pad)
			}
		})
	}
}

// reasonsHeader is where reasons and hooks are defined, the one place.
const reasonsHeader = "../bpf/lib/reasons.h"

type enumerator struct {
	name  string // as in C: REASON_DROP_SPOOFED_IP
	value uint64
}

// cEnum reads the enumerators of enum name from reasonsHeader.
func cEnum(t *testing.T, name string) []enumerator {
	t.Helper()
	src, err := os.ReadFile(reasonsHeader)
	if err != nil {
		t.Fatal(err)
	}
	body := regexp.MustCompile(`(?s)enum ` + name + ` \{(.*?)\};`).FindSubmatch(src)
	if body == nil {
		t.Fatalf("no enum %s in %s", name, reasonsHeader)
	}
	var out []enumerator
	for _, m := range regexp.MustCompile(`\b([A-Z][A-Z0-9_]*)\s*=\s*(\d+)`).FindAllSubmatch(body[1], -1) {
		v, err := strconv.ParseUint(string(m[2]), 10, 32)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, enumerator{string(m[1]), v})
	}
	if len(out) == 0 {
		t.Fatalf("no enumerators in enum %s of %s", name, reasonsHeader)
	}
	return out
}

// Every enumerator of enum reason has its name in user space, and IsDrop is
// true exactly for the REASON_DROP_* ones. The enumerators are read from the
// C header itself, so a reason added there but missing from the committed
// objects' BTF fails here.
func TestReasonNames(t *testing.T) {
	seen := map[uint64]bool{}
	for _, e := range cEnum(t, "reason") {
		seen[e.value] = true
		r := maps.Reason(e.value)
		want := strings.ToLower(strings.TrimPrefix(e.name, "REASON_"))
		if got := r.String(); got != want {
			t.Errorf("%s (%d): String() = %q, want %q", e.name, e.value, got, want)
		}
		if got, want := r.IsDrop(), strings.HasPrefix(e.name, "REASON_DROP_"); got != want {
			t.Errorf("%s: IsDrop() = %v, want %v", e.name, got, want)
		}
	}
	for v, name := range maps.ReasonNames() {
		if !seen[v] {
			t.Errorf("reason %d (%s) is in the objects' BTF but not in %s", v, name, reasonsHeader)
		}
	}

	unknown := maps.Reason(4000)
	if got := unknown.String(); got != "reason_4000" {
		t.Errorf("unknown reason: String() = %q, want reason_4000", got)
	}
	if unknown.IsDrop() {
		t.Error("unknown reason: IsDrop() = true")
	}
}

func TestHookNames(t *testing.T) {
	for _, e := range cEnum(t, "hook") {
		want := strings.ToLower(strings.TrimPrefix(e.name, "HOOK_"))
		if got := maps.Hook(e.value).String(); got != want {
			t.Errorf("%s (%d): String() = %q, want %q", e.name, e.value, got, want)
		}
	}
	if got := maps.Hook(200).String(); got != "hook_200" {
		t.Errorf("unknown hook: String() = %q, want hook_200", got)
	}
}
