package maps_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	stdmaps "maps"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
)

// docs/debugging.md tells an operator how to read every pinned map with
// bpftool. The tests here keep it true. What they read in it:
//
// Each map's fields, on one line per map (backquotes optional):
//
//	Fields of `endpoints`: key `family`, `addr`; value `ifindex`, `flags`, ...
//
// <map> is a name of maps.AllMaps, or maglev_inner for the Maglev tables
// (the inner maps of maglev, reached by id). Each side lists the C struct
// members bpftool names, in any order, every one but padding (pad...). A
// side that is no struct is written `number`: bpftool prints the bare
// number. A map without BTF (maglev, a map of maps) is `key bytes; value
// bytes`: bpftool prints the raw bytes only. Every map has a line, every
// line is a map's, and what it lists is what the map's BTF has and what
// `bpftool -j map dump` prints for a node with an entry in every map.
//
// The names podpath gives the numbers bpftool prints, in tables whose
// header row starts with `| reason |`, `| hook |` or `| nat_stats key |`
// and whose rows start `| <number> | <name> |`: each table lists every
// value of its enum, with the names maps.Reason, maps.Hook and
// maps.NatStatNames give them.
const debuggingDoc = "../docs/debugging.md" // from this package's directory

// mapInner names the Maglev tables in debuggingDoc.
const mapInner = "maglev_inner"

// How debuggingDoc writes a side of a map that is no struct.
const (
	sideNumber = "number" // a bare number: bpftool prints no name
	sideBytes  = "bytes"  // no BTF: bpftool prints the raw bytes
	sideNone   = "none"   // a ring buffer: no key, no value, nothing to dump
)

// docFields is what debuggingDoc says bpftool shows of one map.
type docFields struct {
	line       int
	key, value []string
}

var fieldsLine = regexp.MustCompile(`^Fields of (\S+): key ([^;]+); value (.+?)\.?$`)

// readDocFields parses every "Fields of" line of the doc at path.
func readDocFields(t *testing.T, path string) map[string]docFields {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]docFields{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.ReplaceAll(strings.TrimSpace(sc.Text()), "`", "")
		if !strings.HasPrefix(line, "Fields of ") {
			continue
		}
		m := fieldsLine.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("%s:%d: want \"Fields of <map>: key <f>, ...; value <f>, ...\", have %q", path, n, line)
			continue
		}
		if prev, dup := out[m[1]]; dup {
			t.Errorf("%s:%d: map %s has fields already at line %d", path, n, m[1], prev.line)
		}
		split := func(s string) []string {
			var names []string
			for f := range strings.SplitSeq(s, ",") {
				names = append(names, strings.TrimSpace(f))
			}
			return names
		}
		out[m[1]] = docFields{line: n, key: split(m[2]), value: split(m[3])}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// The maps as an operator reads them: every pinned map, and the Maglev
// tables behind maglev, has a "Fields of" line in debuggingDoc naming its
// key's and value's members, every one of them; bpftool map dump of a
// node with an entry in every map shows each of those names. A map added
// without a line, or a member without its name on the line, fails here.
func TestDebuggingDocMatchesBpftool(t *testing.T) {
	bpftool := lookBpftool(t)
	doc := readDocFields(t, debuggingDoc)
	specs, err := maps.Specs()
	if err != nil {
		t.Fatal(err)
	}
	spec := func(name string) *ebpf.MapSpec {
		if name == mapInner {
			return specs[maps.ProgFromPod].Maps[maps.MapMaglev].InnerMap
		}
		return specs[maps.ProgFromPod].Maps[name]
	}

	// A line for every map, a map for every line, and every member of the
	// map's key and value, as its BTF has them, on it.
	documented := append(slices.Clone(maps.AllMaps), mapInner)
	for _, name := range documented {
		if _, ok := doc[name]; !ok {
			t.Errorf("%s says nothing of map %s: want a line \"Fields of %s: key ...; value ...\"", debuggingDoc, name, name)
		}
	}
	for _, name := range slices.Sorted(stdmaps.Keys(doc)) {
		d := doc[name]
		if !slices.Contains(documented, name) {
			t.Errorf("%s:%d: fields of %s, which is no map of podpath's (maps.AllMaps)", debuggingDoc, d.line, name)
			continue
		}
		ms := spec(name)
		if ms == nil {
			t.Fatalf("no map %s in the %s object", name, maps.ProgFromPod)
		}
		checkDocBTF(t, name, "key", d.line, d.key, ms.Key)
		checkDocBTF(t, name, "value", d.line, d.value, ms.Value)
	}

	n := newNode(t)
	n.mustInit(t)
	fillEveryMap(t, n)

	for _, name := range maps.AllMaps {
		d, ok := doc[name]
		if !ok {
			continue
		}
		if d.key[0] == sideNone {
			if typ := n.openMap(t, name).Type(); typ != ebpf.RingBuf {
				t.Errorf("%s:%d: the doc says map %s has no key and value, but it is a %v, not a ring buffer", debuggingDoc, d.line, name, typ)
			}
			continue
		}
		entries := checkDump(t, name, d, bpftoolRun(t, bpftool, "-j", "map", "dump", "pinned", maps.MapPath(n.root, name)))
		if d.key[0] == sideBytes {
			if _, ok := mapInfo(t, n.openMap(t, name)).BTFID(); ok {
				t.Errorf("%s:%d: map %s has BTF, yet the doc says bpftool shows only bytes", debuggingDoc, d.line, name)
			}
		}
		if name != maps.MapMaglev {
			continue
		}
		// bpftool reaches a Maglev table by the id that stands in the
		// outer map's value.
		for _, e := range entries {
			id := innerMapID(t, e)
			inner := doc[mapInner]
			checkDump(t, fmt.Sprintf("%s (id %d, in %s)", mapInner, id, name), inner,
				bpftoolRun(t, bpftool, "-j", "map", "dump", "id", fmt.Sprint(id)))
		}
	}
}

// checkDocBTF compares what the doc lists for one side of a map with the
// side's BTF type: every member but padding, and nothing else.
func checkDocBTF(t *testing.T, name, side string, line int, fields []string, typ btf.Type) {
	t.Helper()
	where := fmt.Sprintf("%s:%d: %s %s", debuggingDoc, line, name, side)
	if len(fields) == 1 && fields[0] == sideBytes {
		return // a map without BTF: checked on the pinned map
	}
	if len(fields) == 1 && fields[0] == sideNone {
		if typ != nil {
			t.Errorf("%s: the doc says none, the map has %v", where, typ)
		}
		return
	}
	if typ == nil {
		t.Errorf("%s: the map's spec has no BTF type (write %q)", where, sideBytes)
		return
	}
	s, isStruct := btf.UnderlyingType(typ).(*btf.Struct)
	if len(fields) == 1 && fields[0] == sideNumber {
		if isStruct {
			t.Errorf("%s: the doc says a bare number, the map has struct %s", where, s.Name)
		}
		return
	}
	if !isStruct {
		t.Errorf("%s: the doc lists fields %v, the map has %v (write %q)", where, fields, typ, sideNumber)
		return
	}
	var members []string
	for _, m := range s.Members {
		members = append(members, m.Name)
		if !strings.HasPrefix(m.Name, "pad") && !slices.Contains(fields, m.Name) {
			t.Errorf("%s: struct %s has member %s, which the doc does not list", where, s.Name, m.Name)
		}
	}
	for _, f := range fields {
		if !slices.Contains(members, f) {
			t.Errorf("%s: the doc lists %s, which struct %s does not have (%v)", where, f, s.Name, members)
		}
	}
}

// dumpEntry is one entry of `bpftool -j map dump`: the raw bytes, and with
// BTF the formatted key and value (values, one per CPU, for per-CPU maps).
type dumpEntry struct {
	Key        json.RawMessage `json:"key"`
	Value      json.RawMessage `json:"value"`
	InnerMapID *uint32         `json:"inner_map_id"` // newer bpftool, maps of maps
	Formatted  *struct {
		Key    json.RawMessage `json:"key"`
		Value  json.RawMessage `json:"value"`
		Values []struct {
			CPU   int             `json:"cpu"`
			Value json.RawMessage `json:"value"`
		} `json:"values"`
	} `json:"formatted"`
}

// checkDump checks that a map's dump has entries and that each shows the
// fields d lists, and returns the entries. A problem is reported once per
// side, with how many entries have it.
func checkDump(t *testing.T, name string, d docFields, out []byte) []dumpEntry {
	t.Helper()
	var entries []dumpEntry
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("bpftool dump of %s: %v\n%s", name, err, out)
	}
	if len(entries) == 0 {
		t.Errorf("bpftool dump of %s shows no entry: the test wrote none", name)
	}
	type problem struct {
		n       int
		example json.RawMessage
	}
	var order []string
	problems := map[string]*problem{}
	for _, e := range entries {
		var found []string // this entry's problems, each once
		add := func(side string, raw json.RawMessage, ps ...string) {
			for _, p := range ps {
				p = side + ": " + p
				if slices.Contains(found, p) {
					continue
				}
				found = append(found, p)
				if problems[p] == nil {
					problems[p] = &problem{example: raw}
					order = append(order, p)
				}
				problems[p].n++
			}
		}
		switch {
		case d.key[0] == sideBytes && e.Formatted != nil:
			add("entry", e.Formatted.Key, "formatted from BTF, where the doc says raw bytes")
		case d.key[0] == sideBytes:
			add("key", e.Key, sideProblems(e.Key, d.key)...)
			add("value", e.Value, sideProblems(e.Value, d.value)...)
		case e.Formatted == nil:
			add("entry", e.Key, "raw bytes only (no BTF), where the doc does not say bytes")
		default:
			add("key", e.Formatted.Key, sideProblems(e.Formatted.Key, d.key)...)
			if e.Formatted.Values == nil {
				add("value", e.Formatted.Value, sideProblems(e.Formatted.Value, d.value)...)
			}
			for _, v := range e.Formatted.Values {
				add("value", v.Value, sideProblems(v.Value, d.value)...)
			}
		}
	}
	for _, p := range order {
		t.Errorf("bpftool dump of %s (%s:%d), %s, in %d of %d entries, e.g. %s",
			name, debuggingDoc, d.line, p, problems[p].n, len(entries), problems[p].example)
	}
	return entries
}

// sideProblems says how one key or value of a dump differs from the doc's
// fields for it.
func sideProblems(raw json.RawMessage, fields []string) []string {
	switch {
	case len(fields) == 1 && fields[0] == sideBytes:
		var b []string
		if err := json.Unmarshal(raw, &b); err != nil || len(b) == 0 || !strings.HasPrefix(b[0], "0x") {
			return []string{"want raw bytes [\"0x..\", ...]"}
		}
	case len(fields) == 1 && fields[0] == sideNumber:
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return []string{"want a bare number"}
		}
	default:
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			return []string{fmt.Sprintf("want an object with %v", fields)}
		}
		var out []string
		for _, f := range fields {
			if _, ok := obj[f]; !ok {
				out = append(out, fmt.Sprintf("no field %q", f))
			}
		}
		return out
	}
	return nil
}

// innerMapID is the id of the map a map-of-maps entry holds: its value,
// a native-endian u32, which newer bpftool also prints as inner_map_id.
func innerMapID(t *testing.T, e dumpEntry) uint32 {
	t.Helper()
	var hex []string
	if err := json.Unmarshal(e.Value, &hex); err != nil || len(hex) != 4 {
		t.Fatalf("maglev value %s: want 4 raw bytes", e.Value)
	}
	var b [4]byte
	for i, h := range hex {
		if _, err := fmt.Sscanf(h, "0x%x", &b[i]); err != nil {
			t.Fatalf("maglev value %s: %v", e.Value, err)
		}
	}
	id := binary.NativeEndian.Uint32(b[:])
	if e.InnerMapID != nil && *e.InnerMapID != id {
		t.Fatalf("bpftool says inner_map_id %d, the value's bytes %d", *e.InnerMapID, id)
	}
	return id
}

func mapInfo(t *testing.T, m *ebpf.Map) *ebpf.MapInfo {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// fillEveryMap gives every map of node n at least one entry, as the node
// would have them: a service programmed by the service manager (services,
// svc_slots, backends and a Maglev table), a packet counted by from_pod,
// and realistic entries written for what only traffic or other hooks
// create. Arrays (svc_rr, nat_config, nat_stats) have every entry already.
func fillEveryMap(t *testing.T, n *node) {
	t.Helper()
	var (
		podIP      = netip.MustParseAddr("10.244.1.10")
		clientIP   = netip.MustParseAddr("10.244.1.30")
		clusterIP  = netip.MustParseAddr("10.96.0.10")
		nodeIP     = netip.MustParseAddr("192.168.1.5")
		peerIP     = netip.MustParseAddr("192.168.1.6")
		outsideIP  = netip.MustParseAddr("1.1.1.1")
		expires    = maps.Monotonic() + uint64(time.Minute)
		tcpSYN     = uint8(0x02)
		protoTCP   = uint8(6)
		clientPort = uint16(40000)
	)

	network, err := maps.NewNetworks(n.openMap(t, maps.MapNetworks), n.openMap(t, maps.MapNetworkReach)).Put("blue", []string{"red"})
	if err != nil {
		t.Fatal(err)
	}
	if err := maps.NewEndpoints(n.openMap(t, maps.MapEndpoints)).Put(podIP,
		maps.EndpointInfo{Ifindex: 10, Mac: [6]uint8{0x02, 0, 0x0a, 0xf4, 0x01, 0x0a}, NodeMac: [6]uint8{0xee, 0xee, 0, 0, 0, 0x0a}, Network: network, NetnsCookie: 0x1000}); err != nil {
		t.Fatal(err)
	}
	runPinnedFromPod(t, n.root)

	mgr, err := services.Open(n.root, n.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	if _, err := mgr.Create(context.Background(), services.Service{
		Namespace: "shop", Name: "web", Type: services.TypeClusterIP, ClusterIP: clusterIP,
		Ports:           []services.Port{{Protocol: services.ProtocolTCP, Port: 80, TargetPort: 8080}},
		SessionAffinity: services.AffinityClientIP, Algorithm: services.AlgorithmMaglev,
		Backends: []services.Backend{{IP: podIP, Ready: true}, {IP: netip.MustParseAddr("10.244.1.20"), Ready: true}},
	}); err != nil {
		t.Fatal(err)
	}
	// The frontend and a backend the service manager chose, for the
	// entries traffic would make.
	var svc maps.SvcInfo
	if err := n.openMap(t, maps.MapServices).Lookup(maps.SvcKey{Addr: maps.Addr16(clusterIP), Port: maps.Port(80),
		Proto: protoTCP, Family: maps.FamilyIPv4, Scope: uint8(maps.ScopeInternal)}, &svc); err != nil {
		t.Fatalf("the service's frontend: %v", err)
	}
	var backendID uint32
	if err := n.openMap(t, maps.MapSvcSlots).Lookup(maps.SlotKey{SvcId: svc.Id, Slot: 1}, &backendID); err != nil {
		t.Fatalf("the service's first slot: %v", err)
	}

	put := func(name string, key, value any) {
		t.Helper()
		if err := n.openMap(t, name).Put(key, value); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
	}
	put(maps.MapAffinity, maps.AffinityKey{SvcId: svc.Id, Family: maps.FamilyIPv4, Client: maps.Addr16(clientIP)},
		maps.AffinityValue{LastUsed: maps.Monotonic(), BackendId: backendID})
	put(maps.MapConntrack, maps.CtKey{Saddr: maps.Addr16(clientIP), Daddr: maps.Addr16(clusterIP),
		Sport: maps.Port(clientPort), Dport: maps.Port(80), Proto: protoTCP, Family: maps.FamilyIPv4},
		maps.CtEntry{Expires: expires, Packets: 1, Bytes: 74, SvcId: svc.Id, BackendId: backendID, TcpFlags: tcpSYN})
	put(maps.MapNodeAddrs, maps.NewEndpointKey(nodeIP), uint32(2))
	put(maps.MapSNAT, maps.CtKey{Saddr: maps.Addr16(clientIP), Daddr: maps.Addr16(outsideIP),
		Sport: maps.Port(clientPort), Dport: maps.Port(443), Proto: protoTCP, Family: maps.FamilyIPv4},
		maps.NatEntry{Expires: expires, Packets: 1, Bytes: 74, ToAddr: maps.Addr16(nodeIP), ToPort: maps.Port(1024), TcpFlags: tcpSYN})
	put(maps.MapPeers, maps.PeerKey{Prefixlen: 32 + 24, Family: maps.FamilyIPv4, Addr: maps.Addr16(netip.MustParseAddr("10.244.2.0"))},
		maps.Peer{NodeAddr: maps.Addr16(peerIP), Family: maps.FamilyIPv4})
	put(maps.MapSockRevNat, maps.SockRevKey{Cookie: 4097, Addr: maps.Addr16(podIP), Port: maps.Port(8080), Family: maps.FamilyIPv4},
		maps.SockRevValue{Addr: maps.Addr16(clusterIP), Port: maps.Port(80), Family: maps.FamilyIPv4, SvcId: svc.Id})
	// struct frag_key and frag_entry have no Go name outside the package.
	type fragKey struct {
		Saddr, Daddr uint32
		ID           uint16
		Proto, Hook  uint8
	}
	type fragEntry struct {
		Expires      uint64
		Saddr, Daddr uint32
		Decision     uint8
		Pad          [7]uint8
	}
	// The IP id is in network order, as a port.
	put(maps.MapFrags, fragKey{Saddr: maps.Addr16(clientIP)[0], Daddr: maps.Addr16(clusterIP)[0], ID: maps.Port(0x1234), Proto: 17, Hook: uint8(maps.HookFromPod)},
		fragEntry{Expires: maps.Monotonic() + uint64(30*time.Second), Saddr: maps.Addr16(clientIP)[0], Daddr: maps.Addr16(podIP)[0], Decision: 1})

	// Policy: the client's identity, a CIDR's, the pod's rules allowing it
	// TCP 8080 and 8192-8447, the connection a rule let in, a first
	// fragment's ports.
	ms := map[string]*ebpf.Map{}
	for _, name := range maps.PolicyMaps {
		ms[name] = n.openMap(t, name)
	}
	pol, err := maps.NewPolicy(ms)
	if err != nil {
		t.Fatal(err)
	}
	if err := pol.SetIdentity(netip.PrefixFrom(clientIP, 32), maps.IdentityFirstUser); err != nil {
		t.Fatal(err)
	}
	if err := pol.Allow(maps.PolicyRule{Endpoint: podIP, Direction: maps.PolicyIngress, Identity: maps.IdentityFirstUser,
		Proto: protoTCP, PortFirst: 8080, PortLast: 8080}); err != nil {
		t.Fatal(err)
	}
	if err := pol.SetCIDRIdentity(netip.MustParsePrefix("192.0.2.0/24"), maps.IdentityFirstUser+1); err != nil {
		t.Fatal(err)
	}
	if err := pol.Allow(maps.PolicyRule{Endpoint: podIP, Direction: maps.PolicyIngress, Identity: maps.IdentityFirstUser,
		Proto: protoTCP, PortFirst: 8192, PortLast: 8447}); err != nil {
		t.Fatal(err)
	}
	put(maps.MapPolicyCT, maps.PolicyCtKey{Saddr: maps.Addr16(clientIP)[0], Daddr: maps.Addr16(podIP)[0], Sport: maps.Port(clientPort),
		Dport: maps.Port(8080), Proto: protoTCP, Direction: maps.PolicyIngress},
		maps.PolicyCtEntry{Expires: expires, TcpFlags: tcpSYN})
	type fragPortsKey struct {
		Saddr, Daddr uint32
		ID           uint16
		Proto, Pad   uint8
	}
	type fragPorts struct {
		Expires      uint64
		Sport, Dport uint16
		Pad          [4]uint8
	}
	put(maps.MapPolicyFrags, fragPortsKey{Saddr: maps.Addr16(clientIP)[0], Daddr: maps.Addr16(podIP)[0], ID: maps.Port(0x1234), Proto: 17},
		fragPorts{Expires: maps.Monotonic() + uint64(30*time.Second), Sport: maps.Port(40001), Dport: maps.Port(53)})
}

// The doc's tables of numbers bpftool prints and the names podpath gives
// them (reason and hook of counters, the keys of nat_stats) are the
// enums' own, all of them.
func TestDebuggingDocNames(t *testing.T) {
	tables := readDocTables(t, debuggingDoc, "reason", "hook", "nat_stats key")
	hooks := maps.Names{}
	for v := range uint64(256) {
		if name := maps.Hook(v).String(); name != fmt.Sprintf("hook_%d", v) {
			hooks[v] = name
		}
	}
	natStats := maps.Names{}
	for v, name := range maps.NatStatNames {
		natStats[uint64(v)] = name
	}
	for table, want := range map[string]maps.Names{
		"reason":        maps.ReasonNames(),
		"hook":          hooks,
		"nat_stats key": natStats,
	} {
		have := tables[table]
		for v, name := range want {
			if have[v] != name {
				t.Errorf("%s, table %q: %d is %q, want %q", debuggingDoc, table, v, have[v], name)
			}
		}
		for v, name := range have {
			if _, ok := want[v]; !ok {
				t.Errorf("%s, table %q: %d (%q) is no value of the enum", debuggingDoc, table, v, name)
			}
		}
	}
}

var tableRow = regexp.MustCompile("^\\| *(\\d+) *\\| *`?([a-z0-9_]+)`? *\\|")

// readDocTables reads the tables of the doc at path whose header starts
// with one of names: value -> name, by table.
func readDocTables(t *testing.T, path string, names ...string) map[string]maps.Names {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]maps.Names{}
	table := ""
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			table = ""
			continue
		}
		first := strings.TrimSpace(strings.SplitN(line, "|", 3)[1])
		if slices.Contains(names, first) {
			if out[first] != nil {
				t.Errorf("%s:%d: a second table %q", path, i+1, first)
			}
			table = first
			out[table] = maps.Names{}
			continue
		}
		if table == "" || strings.HasPrefix(line, "|-") || strings.HasPrefix(line, "| -") || strings.HasPrefix(line, "|:") || strings.HasPrefix(line, "| :") {
			continue
		}
		m := tableRow.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("%s:%d: table %q: want \"| <number> | <name> | ...\", have %q", path, i+1, table, line)
			continue
		}
		var v uint64
		fmt.Sscan(m[1], &v)
		if _, dup := out[table][v]; dup {
			t.Errorf("%s:%d: table %q has %d twice", path, i+1, table, v)
		}
		out[table][v] = m[2]
	}
	for _, name := range names {
		if out[name] == nil {
			t.Errorf("%s has no table %q (a header row \"| %s | name | ... |\")", path, name, name)
		}
	}
	return out
}
