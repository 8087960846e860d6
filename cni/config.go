package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/podpath/podpath/services"
)

// NetConf is the plugin's entry in a network configuration list, as the
// runtime passes it on stdin (with name and cniVersion filled in).
type NetConf struct {
	types.PluginConf

	// PinRoot is where the node's maps and programs are pinned.
	PinRoot string `json:"pinRoot,omitempty"`
	// StateDir holds node.json (written by `podpath node init`) and the
	// address allocations under ipam/<network>/.
	StateDir string `json:"stateDir,omitempty"`
	// PodCIDR is the pool pod addresses come from; default: the node's.
	PodCIDR string `json:"podCIDR,omitempty"`
	// MTU of both ends of each pod's veth; default: the node's.
	MTU int `json:"mtu,omitempty"`
	// Reaches names the networks this network's pods may exchange
	// packets with, both ways, or "*" for every network. The pods of one
	// network always reach each other; those of two networks neither of
	// which reaches the other never do.
	Reaches []string `json:"reaches,omitempty"`
	// DeferTCX: on a tcx node, ADD attaches the pod's programs with cls_bpf
	// and the node agent moves them to tcx links once ADDs are quiet
	// (MoveToTCX): a tcx attach waits for an RCU grace period holding the
	// kernel's rtnl lock, which pods' start-up then does not pay.
	DeferTCX bool `json:"deferTCX,omitempty"`
	// RuntimeConfig carries the capabilities the runtime fills in: with
	// "capabilities": {"portMappings": true} in the conflist, the pod's
	// hostPorts (Docker's -p).
	RuntimeConfig struct {
		PortMappings []PortMapping `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// PortMapping is one hostPort of the portMappings capability.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Config is a validated NetConf with every default resolved.
type Config struct {
	Network    string
	CNIVersion string
	PinRoot    string
	StateDir   string
	// PodCIDR, Gateway and MTU are set when node is true.
	PodCIDR netip.Prefix
	Gateway netip.Addr
	MTU     int
	// Reaches are the networks the network reaches (maps.ReachAll: all).
	Reaches []string
	// PolicyPending: the node's agent computes NetworkPolicies, and a
	// Kubernetes pod starts closed until it has written the pod's
	// (loader.Config.PolicyPending).
	PolicyPending bool
	// DeferTCX: see NetConf.DeferTCX.
	DeferTCX bool
	// TCAttach is the node's tc attach mechanism (loader.Config.TCAttach);
	// empty when the node recorded none.
	TCAttach string
	DNS      types.DNS
	// PrevResult is the result of the plugins before this one in the
	// chain, converted to the current result type; nil when first.
	PrevResult       *types100.Result
	ValidAttachments []types.GCAttachment
	// HostPorts are the pod's port mappings, validated, one service per
	// host address.
	HostPorts []services.Service
}

// ParseConfig decodes and validates the plugin configuration. With needPod
// set, the pod CIDR and MTU must be known, from the configuration or from
// the node's recorded configuration; without it (DEL, GC) they are not
// needed and a node that was never initialised is fine.
func ParseConfig(stdin []byte, needPod bool) (*Config, error) {
	var nc NetConf
	if err := json.Unmarshal(stdin, &nc); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, newError(types.ErrDecodingFailure, "decode network configuration: %v", err)
		}
		return nil, invalidConfig("invalid network configuration: %v", err)
	}
	c := &Config{
		Network:          nc.Name,
		CNIVersion:       nc.CNIVersion,
		PinRoot:          nc.PinRoot,
		StateDir:         nc.StateDir,
		MTU:              nc.MTU,
		DNS:              nc.DNS,
		ValidAttachments: nc.ValidAttachments,
		Reaches:          nc.Reaches,
		DeferTCX:         nc.DeferTCX,
	}
	hostPorts, err := hostPortServices(nc.RuntimeConfig.PortMappings)
	if err != nil {
		return nil, err
	}
	c.HostPorts = hostPorts
	if c.Network == "" {
		return nil, invalidConfig("network name is missing")
	}
	if len(c.Network) > maxNetworkName {
		return nil, invalidConfig("network name %q: longer than %d bytes", c.Network, maxNetworkName)
	}
	for _, r := range c.Reaches {
		if r == "" || len(r) > maxNetworkName {
			return nil, invalidConfig("reaches: %q is no network name (1-%d bytes, or \"*\" for every network)", r, maxNetworkName)
		}
	}
	if c.StateDir == "" {
		c.StateDir = loader.DefaultStateDir
	}
	if !filepath.IsAbs(c.StateDir) {
		return nil, invalidConfig("stateDir %q must be an absolute path", c.StateDir)
	}
	if c.PinRoot != "" && !filepath.IsAbs(c.PinRoot) {
		return nil, invalidConfig("pinRoot %q must be an absolute path", c.PinRoot)
	}
	if nc.PodCIDR != "" {
		p, err := netip.ParsePrefix(nc.PodCIDR)
		if err != nil {
			return nil, invalidConfig("podCIDR %q is not a CIDR: %v", nc.PodCIDR, err)
		}
		if err := validPool(p); err != nil {
			return nil, err
		}
		c.PodCIDR = p
	}
	if nc.MTU != 0 && (nc.MTU < 576 || nc.MTU > 65535) {
		return nil, invalidConfig("mtu %d out of range 576-65535", nc.MTU)
	}
	if nc.RawPrevResult != nil {
		if err := version.ParsePrevResult(&nc.PluginConf); err != nil {
			return nil, newError(types.ErrDecodingFailure, "decode prevResult: %v", err)
		}
		prev, err := types100.NewResultFromResult(nc.PrevResult)
		if err != nil {
			return nil, newError(types.ErrDecodingFailure, "convert prevResult: %v", err)
		}
		c.PrevResult = prev
	}

	// The node's recorded configuration fills what the network leaves out.
	node, nodeErr := loader.ReadNodeConfig(c.StateDir)
	if nodeErr == nil {
		if c.PinRoot == "" {
			c.PinRoot = node.PinRoot
		}
		if !c.PodCIDR.IsValid() {
			c.PodCIDR = node.PodCIDR
		}
		if c.MTU == 0 {
			c.MTU = node.MTU
		}
		c.Gateway = node.Gateway
		c.TCAttach = node.TCAttach
		c.PolicyPending = node.PolicyPending
	}
	if c.PinRoot == "" {
		c.PinRoot = maps.DefaultPinRoot
	}
	if !c.Gateway.IsValid() {
		c.Gateway = netip.MustParseAddr(loader.DefaultGateway)
	}
	if c.MTU == 0 {
		c.MTU = loader.DefaultMTU
	}
	if needPod && !c.PodCIDR.IsValid() {
		if nodeErr != nil {
			return nil, newError(CodeDatapathNotLoaded, "no podCIDR in the network configuration and no node configuration: %v", nodeErr)
		}
		return nil, invalidConfig("no podCIDR in the network configuration nor in %s", c.StateDir)
	}
	if needPod {
		if err := validPool(c.PodCIDR); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// maxNetworkName is the longest network name the networks map holds.
const maxNetworkName = 59

// validPool accepts an IPv4 network of /8 to /30 without host bits.
func validPool(p netip.Prefix) error {
	if !p.Addr().Is4() {
		return invalidConfig("podCIDR %s: only IPv4 pools are supported", p)
	}
	if p != p.Masked() {
		return invalidConfig("podCIDR %s has host bits set (did you mean %s?)", p, p.Masked())
	}
	if p.Bits() < 8 || p.Bits() > 30 {
		return invalidConfig("podCIDR %s: prefix length must be 8-30", p)
	}
	return nil
}

// podArgs are the CNI_ARGS a Kubernetes runtime sends: they label logs and
// name the pod whose policy the agent computes.
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the wire names
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

func parseArgs(s string) (podArgs, error) {
	var a podArgs
	if err := types.LoadArgs(s, &a); err != nil {
		return a, newError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS: %v", err)
	}
	return a, nil
}

func (a podArgs) String() string {
	if a.K8S_POD_NAME == "" {
		return ""
	}
	return fmt.Sprintf("%s/%s", a.K8S_POD_NAMESPACE, a.K8S_POD_NAME)
}
