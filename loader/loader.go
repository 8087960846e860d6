// Package loader loads podpath's BPF objects, pins their maps and programs
// under a node's pin root, attaches programs to devices and replaces them in
// place on upgrade, keeping the pinned maps and their contents.
package loader

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
)

// Defaults of a node.
const (
	DefaultStateDir     = "/var/lib/podpath"
	DefaultMaxEndpoints = 65536
	DefaultMaxServices  = 65536
	DefaultMaxBackends  = 262144
	DefaultConntrack    = 262144
	// DefaultMaglevTableSize is the per-service Maglev table: a prime well
	// above 100 times the backends of any one service, so removing one of N
	// backends moves close to 1/N of the flows.
	DefaultMaglevTableSize = 16381
	DefaultMTU             = 1500
	DefaultMaxNAT          = 131072
	// The SNAT port range stays below the NodePort range and clear of
	// Linux's default ephemeral range (32768-60999), so masqueraded flows
	// never collide with the node's own connections.
	DefaultSNATPortMin = 1024
	DefaultSNATPortMax = 29999
	// DefaultGateway is the link-local next hop every pod routes through; its
	// neighbour entry in the pod points at the host-side veth, so no bridge
	// or ARP responder is needed.
	DefaultGateway = "169.254.1.1"
)

// Config describes a node's datapath.
type Config struct {
	PinRoot      string       `json:"pinRoot"`
	StateDir     string       `json:"stateDir"`
	PodCIDR      netip.Prefix `json:"podCIDR"`
	Gateway      netip.Addr   `json:"gateway"`
	MTU          int          `json:"mtu"`
	MaxEndpoints uint32       `json:"maxEndpoints"`
	// MaxServices bounds service frontends; MaxBackends backends (and four
	// times as many backend slots); Conntrack the tracked flow directions.
	MaxServices uint32 `json:"maxServices"`
	MaxBackends uint32 `json:"maxBackends"`
	Conntrack   uint32 `json:"conntrack"`
	// Uplinks are the devices traffic from the network arrives on: they get
	// from_netdev at tc ingress and, unless XDPMode is off, xdp_netdev; their
	// IPv4 addresses are the node addresses NodePort and hostPort answer on.
	Uplinks []string `json:"uplinks,omitempty"`
	// XDPMode is how xdp_netdev is attached to the uplinks: XDPAuto,
	// XDPNative, XDPGeneric or XDPOff. Empty at init means: the mode the
	// node records, auto on a new node. Init records the resolved mode.
	XDPMode string `json:"xdpMode,omitempty"`
	// Routing is how pods reach other nodes' pods (the peers):
	// RoutingDirect, the default, or RoutingVXLAN, whose UDP port and
	// network id are VXLANPort and VNI. MTU 0 at init means: the first
	// uplink's, less the VXLAN overhead in overlay mode.
	Routing   string `json:"routing,omitempty"`
	VXLANPort uint16 `json:"vxlanPort,omitempty"`
	VNI       uint32 `json:"vni,omitempty"`
	// Drop events (podpath monitor): at most DropEventRate per second
	// and CPU, DropEventBurst at once; 0 means the default
	// (maps.DefaultDropEventRate, maps.DefaultDropEventBurst).
	// NoDropEvents sends none.
	DropEventRate  uint32 `json:"dropEventRate,omitempty"`
	DropEventBurst uint32 `json:"dropEventBurst,omitempty"`
	NoDropEvents   bool   `json:"noDropEvents,omitempty"`
	// SNAT: pods' traffic leaving through an uplink for destinations
	// outside the pod CIDR, ClusterCIDRs and NonMasqCIDRs leaves with
	// SNATAddr (default: the first uplink's first IPv4 address) and a port
	// in SNATPortMin-SNATPortMax. MaxNAT bounds the mappings (two per flow).
	NoSNAT       bool           `json:"noSNAT,omitempty"`
	SNATAddr     netip.Addr     `json:"snatAddr,omitempty"`
	SNATPortMin  uint16         `json:"snatPortMin"`
	SNATPortMax  uint16         `json:"snatPortMax"`
	ClusterCIDRs []netip.Prefix `json:"clusterCIDRs,omitempty"`
	NonMasqCIDRs []netip.Prefix `json:"nonMasqueradeCIDRs,omitempty"`
	MaxNAT       uint32         `json:"maxNAT"`
	// MaglevTableSize is the prime size of each Maglev lookup table.
	MaglevTableSize uint32 `json:"maglevTableSize"`
	// TCAttach is how tc programs are attached on this node: "tcx" or "tc"
	// (clsact + cls_bpf). Empty or "auto" at init means: tcx where the
	// kernel has it. Init records the resolved choice, and every later
	// attachment (the CNI plugin's) follows it.
	TCAttach string `json:"tcAttach"`
	// PolicyPending makes the CNI plugin start each Kubernetes pod closed
	// (maps.EndpointPolicyPending) and wait for the agent to write its
	// policy: set by the agent, which computes NetworkPolicies.
	PolicyPending bool `json:"policyPending,omitempty"`
}

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.PinRoot == "" {
		c.PinRoot = maps.DefaultPinRoot
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if !c.Gateway.IsValid() {
		c.Gateway = netip.MustParseAddr(DefaultGateway)
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MaxEndpoints == 0 {
		c.MaxEndpoints = DefaultMaxEndpoints
	}
	if c.MaxServices == 0 {
		c.MaxServices = DefaultMaxServices
	}
	if c.MaxBackends == 0 {
		c.MaxBackends = DefaultMaxBackends
	}
	if c.Conntrack == 0 {
		c.Conntrack = DefaultConntrack
	}
	if c.MaglevTableSize == 0 {
		c.MaglevTableSize = DefaultMaglevTableSize
	}
	if c.SNATPortMin == 0 && c.SNATPortMax == 0 {
		c.SNATPortMin, c.SNATPortMax = DefaultSNATPortMin, DefaultSNATPortMax
	}
	if c.MaxNAT == 0 {
		c.MaxNAT = DefaultMaxNAT
	}
	if c.Routing == "" {
		c.Routing = RoutingDirect
	}
	if c.VXLANPort == 0 {
		c.VXLANPort = DefaultVXLANPort
	}
	if c.VNI == 0 {
		c.VNI = DefaultVNI
	}
	return c
}

// Validate reports configuration that cannot work.
func (c Config) Validate() error {
	if !c.PodCIDR.IsValid() {
		return errors.New("pod CIDR is required (for example --pod-cidr 10.244.1.0/24)")
	}
	if c.PodCIDR != c.PodCIDR.Masked() {
		return fmt.Errorf("pod CIDR %s has host bits set (did you mean %s?)", c.PodCIDR, c.PodCIDR.Masked())
	}
	if c.PodCIDR.Addr().Is4() && c.PodCIDR.Bits() > 30 {
		return fmt.Errorf("pod CIDR %s is too small: need at least a /30", c.PodCIDR)
	}
	if c.MTU < 576 || c.MTU > 65535 {
		return fmt.Errorf("MTU %d out of range 576-65535", c.MTU)
	}
	if c.MaxEndpoints < 16 || c.MaxEndpoints > 1<<22 {
		return fmt.Errorf("max endpoints %d out of range 16-%d", c.MaxEndpoints, 1<<22)
	}
	for _, b := range []struct {
		name      string
		v, lo, hi uint32
	}{
		{"max services", c.MaxServices, 16, 1 << 22},
		{"max backends", c.MaxBackends, 16, 1 << 24},
		{"conntrack size", c.Conntrack, 1024, 1 << 26},
		{"NAT map size", c.MaxNAT, 64, 1 << 26},
	} {
		if b.v < b.lo || b.v > b.hi {
			return fmt.Errorf("%s %d out of range %d-%d", b.name, b.v, b.lo, b.hi)
		}
	}
	if !isPrime(c.MaglevTableSize) || c.MaglevTableSize < 251 || c.MaglevTableSize > 131071 {
		return fmt.Errorf("Maglev table size %d must be a prime between 251 and 131071 (e.g. 16381, 65521)", c.MaglevTableSize)
	}
	if c.SNATPortMin == 0 || c.SNATPortMin > c.SNATPortMax {
		return fmt.Errorf("SNAT port range %d-%d is empty", c.SNATPortMin, c.SNATPortMax)
	}
	if c.SNATAddr.IsValid() && !c.SNATAddr.Is4() {
		return fmt.Errorf("SNAT address %s: only IPv4 for now", c.SNATAddr)
	}
	switch c.TCAttach {
	case "", "auto", ModeTCX, ModeLegacyTC:
	default:
		return fmt.Errorf("tc attach mode %q: want auto, %s or %s", c.TCAttach, ModeTCX, ModeLegacyTC)
	}
	switch c.XDPMode {
	case "", XDPAuto, XDPNative, XDPGeneric, XDPOff:
	default:
		return fmt.Errorf("XDP mode %q: want %s, %s, %s or %s", c.XDPMode, XDPAuto, XDPNative, XDPGeneric, XDPOff)
	}
	if c.DropEventRate > maps.MaxDropEventRate || c.DropEventBurst > maps.MaxDropEventRate {
		return fmt.Errorf("drop events: rate %d and burst %d must be at most %d", c.DropEventRate, c.DropEventBurst, maps.MaxDropEventRate)
	}
	switch c.Routing {
	case "", RoutingDirect:
	case RoutingVXLAN:
		if len(c.Uplinks) == 0 {
			return fmt.Errorf("routing %s needs an uplink (--uplink)", RoutingVXLAN)
		}
		if c.VNI >= maps.NetworkVNIBase {
			// VNIs from 2^23 up carry the sending pod's network.
			return fmt.Errorf("VNI %d out of range 1-%d", c.VNI, maps.NetworkVNIBase-1)
		}
	default:
		return fmt.Errorf("routing %q: want %s or %s", c.Routing, RoutingDirect, RoutingVXLAN)
	}
	return nil
}

// resolveTCAttach turns "auto" into the mechanism the kernel offers and
// refuses tcx where the kernel has none.
func (c *Config) resolveTCAttach(f Features) error {
	switch c.TCAttach {
	case "", "auto":
		c.TCAttach = f.TCMechanism()
	case ModeTCX:
		if !f.TCX {
			return fmt.Errorf("tc attach mode tcx: kernel %s has no tcx (use auto or tc)", f.Kernel)
		}
	}
	return nil
}

// nodeFile is where node init records the node's configuration, so the CNI
// plugin and the CLI find the pod CIDR and pin root without a daemon.
func nodeFile(stateDir string) string { return filepath.Join(stateDir, "node.json") }

// ReadNodeConfig reads the configuration node init recorded in stateDir.
func ReadNodeConfig(stateDir string) (Config, error) {
	b, err := os.ReadFile(nodeFile(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return Config{}, fmt.Errorf("%w: no %s (run `podpath node init`)", maps.ErrNotLoaded, nodeFile(stateDir))
	}
	if err != nil {
		return Config{}, err
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("parse %s: %w", nodeFile(stateDir), err)
	}
	return c, nil
}

func writeNodeConfig(c Config) error {
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp := nodeFile(c.StateDir) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, nodeFile(c.StateDir))
}

// Init loads the datapath for a node: maps are created or reused from their
// pins (refused if their layout changed), programs are loaded and pinned, and
// programs already attached are replaced in place by the new ones.
func Init(c Config) error {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if prev, err := ReadNodeConfig(c.StateDir); err == nil && c.Routing == "" {
		// An init that names no routing (an upgrade) keeps the node's.
		c.Routing, c.VXLANPort, c.VNI = prev.Routing, prev.VXLANPort, prev.VNI
	}
	if err := c.resolveMTU(); err != nil {
		return err
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return err
	}
	prev, prevErr := ReadNodeConfig(c.StateDir)
	if prevErr == nil && prev.PodCIDR != c.PodCIDR {
		return fmt.Errorf("node already initialised with pod CIDR %s; run `podpath node reset` before changing it to %s", prev.PodCIDR, c.PodCIDR)
	}
	if prevErr == nil && prev.MaglevTableSize != 0 && prev.MaglevTableSize != c.MaglevTableSize {
		return fmt.Errorf("node's Maglev tables have %d entries; run `podpath node reset` before changing it to %d", prev.MaglevTableSize, c.MaglevTableSize)
	}
	if prevErr == nil && (c.TCAttach == "" || c.TCAttach == "auto") {
		c.TCAttach = prev.TCAttach // an upgrade keeps the node's mechanism
	}
	if c.XDPMode == "" {
		c.XDPMode = keptXDPMode(c.PinRoot, prev, prevErr)
	}
	f, err := Probe()
	if err != nil {
		return err
	}
	if err := c.resolveTCAttach(f); err != nil {
		return err
	}
	if prevErr == nil && prev.TCAttach != "" && prev.TCAttach != c.TCAttach {
		return fmt.Errorf("node attaches with %s; run `podpath node reset` before switching to %s", prev.TCAttach, c.TCAttach)
	}
	if err := ensureBPFFS(c.PinRoot); err != nil {
		return err
	}
	for _, dir := range []string{c.PinRoot, maps.ProgDir(c.PinRoot), maps.LinkDir(c.PinRoot)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create pin directory: %w (is bpffs mounted at /sys/fs/bpf?)", err)
		}
	}
	specs, err := maps.Specs()
	if err != nil {
		return err
	}
	traceOn := tracingOn(c.PinRoot)
	progs := map[string]*ebpf.Program{}
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	for _, name := range sortedKeys(specs) {
		spec := specs[name]
		if err := sizeMaps(spec, c); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := setTraceCapable(spec, traceOn); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := checkPinnedMaps(c.PinRoot, spec); err != nil {
			return err
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
			Maps: ebpf.MapOptions{PinPath: c.PinRoot},
		})
		if err != nil {
			return fmt.Errorf("load %s: %w", name, err)
		}
		prog := coll.Programs[name]
		delete(coll.Programs, name)
		coll.Close()
		if prog == nil {
			return fmt.Errorf("object %s has no program %s", name, name)
		}
		progs[name] = prog
		if err := pinProgram(c.PinRoot, name, prog); err != nil {
			return err
		}
	}
	if err := configureEvents(c); err != nil {
		return err
	}
	if err := maps.MigratePolicy(c.PinRoot); err != nil {
		return err
	}
	if err := replaceAttached(c.PinRoot, progs); err != nil {
		return err
	}
	if err := attachToPod(c, progs[maps.ProgToPod]); err != nil {
		return err
	}
	var prevUplinks []string
	if prevErr == nil {
		prevUplinks = prev.Uplinks
	}
	if err := attachUplinks(c, prevUplinks, progs); err != nil {
		return err
	}
	if c.Routing == RoutingVXLAN {
		err = ensureOverlay(c, progs)
	} else {
		err = removeOverlay(c.PinRoot)
	}
	if err != nil {
		return err
	}
	peers, err := ReadPeers(c.StateDir)
	if err != nil {
		return err
	}
	if err := syncPeers(c, peers); err != nil {
		return err
	}
	if err := loadSocketLB(c); err != nil {
		return err
	}
	if err := writeNodeConfig(c); err != nil {
		return fmt.Errorf("record node config: %w", err)
	}
	slog.Info("datapath loaded", "pinRoot", c.PinRoot, "podCIDR", c.PodCIDR)
	return nil
}

// sizeMaps applies the node's configured sizes to the map specs, and the
// Maglev table size to the programs that index the tables.
func sizeMaps(spec *ebpf.CollectionSpec, c Config) error {
	sizes := map[string]uint32{
		maps.MapEndpoints:  c.MaxEndpoints,
		maps.MapServices:   c.MaxServices,
		maps.MapSvcRR:      c.MaxServices,
		maps.MapMaglev:     c.MaxServices,
		maps.MapAffinity:   c.MaxServices,
		maps.MapBackends:   c.MaxBackends,
		maps.MapSvcSlots:   4 * c.MaxBackends,
		maps.MapConntrack:  c.Conntrack,
		maps.MapSNAT:       c.MaxNAT,
		maps.MapSockRevNat: c.Conntrack,
	}
	for name, size := range sizes {
		if ms, ok := spec.Maps[name]; ok {
			ms.MaxEntries = size
		}
	}
	if ms, ok := spec.Maps[maps.MapMaglev]; ok && ms.InnerMap != nil {
		ms.InnerMap.MaxEntries = c.MaglevTableSize
	}
	if v, ok := spec.Variables[maps.VarMaglevTableSize]; ok {
		if err := v.Set(c.MaglevTableSize); err != nil {
			return fmt.Errorf("set %s: %w", maps.VarMaglevTableSize, err)
		}
	}
	if v, ok := spec.Variables[maps.VarFIBLookupFlags]; ok {
		if f, err := Probe(); err == nil && f.FIBSkipNeigh {
			if err := v.Set(uint32(maps.FIBLookupSkipNeigh)); err != nil {
				return fmt.Errorf("set %s: %w", maps.VarFIBLookupFlags, err)
			}
		}
	}
	if c.Routing != RoutingVXLAN {
		return nil
	}
	addr, err := overlayAddr(c)
	if err != nil {
		return err
	}
	// Where the kernel cannot make the room, from_pod does not try: the
	// overlay device encapsulates every packet.
	if f, err := Probe(); err != nil || !f.OverlayEncap {
		addr = netip.Addr{}
	}
	return setOverlayVars(spec, c.VXLANPort, addr)
}

// setOverlayVars gives the programs of spec that read them the node's
// VXLAN port and its address in the overlay (none: addr not valid, and
// from_pod leaves encapsulation to the overlay device).
func setOverlayVars(spec *ebpf.CollectionSpec, port uint16, addr netip.Addr) error {
	if v, ok := spec.Variables[maps.VarOverlayPort]; ok {
		if err := v.Set(overlayPortBE(port)); err != nil {
			return fmt.Errorf("set %s: %w", maps.VarOverlayPort, err)
		}
	}
	if v, ok := spec.Variables[maps.VarOverlayAddr]; ok && addr.Is4() {
		if err := v.Set(addr.As4()); err != nil {
			return fmt.Errorf("set %s: %w", maps.VarOverlayAddr, err)
		}
	}
	return nil
}

// overlayPortBE is port as the programs compare it, in network byte order.
func overlayPortBE(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for d := uint32(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// checkPinnedMaps refuses to reuse a pinned map this build would misread.
func checkPinnedMaps(root string, spec *ebpf.CollectionSpec) error {
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		m, err := ebpf.LoadPinnedMap(maps.MapPath(root, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", name, err)
		}
		err = maps.CheckLayout(ms, m)
		if err == nil {
			if cerr := ms.Compatible(m); cerr != nil {
				err = fmt.Errorf("map %s: %w", name, cerr)
			}
		}
		m.Close()
		if err != nil {
			return fmt.Errorf("%w; its contents cannot be carried over: run `podpath node reset` (pods lose connectivity until re-added)", err)
		}
	}
	return nil
}

// pinProgram pins prog as name, replacing an older pin atomically.
func pinProgram(root, name string, prog *ebpf.Program) error {
	final := maps.ProgPath(root, name)
	tmp := final + "_new" // bpffs names may not contain dots
	os.Remove(tmp)
	if err := prog.Pin(tmp); err != nil {
		return fmt.Errorf("pin program %s: %w", name, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pin program %s: %w", name, err)
	}
	return nil
}

// LoadPinnedProgram opens the node's current version of a program.
func LoadPinnedProgram(root, name string) (*ebpf.Program, error) {
	p, err := ebpf.LoadPinnedProgram(maps.ProgPath(root, name), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no program %s under %s (run `podpath node init`)", maps.ErrNotLoaded, name, root)
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned program %s: %w", name, err)
	}
	return p, nil
}

// Reset detaches every program podpath attached in this network namespace,
// removes the pins and forgets the node configuration. Pods keep their veths
// and addresses but lose eBPF forwarding until the node is initialised again
// and they are re-added.
func Reset(pinRoot, stateDir string) error {
	if pinRoot == "" {
		pinRoot = maps.DefaultPinRoot
	}
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	atts, err := Attachments(pinRoot)
	if err != nil {
		return err
	}
	var errs []error
	cgs, err := CgroupAttachments(pinRoot)
	if err != nil {
		return err
	}
	for _, a := range cgs {
		errs = append(errs, DetachSocketLB(pinRoot, a.Cgroup))
	}
	for _, a := range atts {
		switch a.Mode {
		case ModeXDPNative, ModeXDPGeneric:
			errs = append(errs, DetachXDP(pinRoot, a.Program, a.Ifname))
		default:
			errs = append(errs, DetachTC(pinRoot, a.Program, a.Ifname, a.Direction))
		}
	}
	errs = append(errs, removeOverlay(pinRoot), removePeerRoutes())
	if err := os.RemoveAll(pinRoot); err != nil {
		errs = append(errs, fmt.Errorf("remove pins: %w", err))
	}
	for _, f := range []string{nodeFile(stateDir), peersFile(stateDir)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
