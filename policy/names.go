package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	pmaps "github.com/podpath/podpath/maps"
)

// Names say what the datapath's numbers stand for: identities by their
// namespace and labels (or CIDR), pod addresses by namespace/name. The
// agent writes them beside node.json for `podpath policy`.
type Names struct {
	Identities map[uint32]string     `json:"identities"`
	Pods       map[netip.Addr]string `json:"pods"`
}

// NamesFile is where the agent keeps the names.
func NamesFile(stateDir string) string { return filepath.Join(stateDir, "policy-names.json") }

// WriteNames replaces the names file.
func WriteNames(stateDir string, n Names) error {
	b, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		return err
	}
	tmp := NamesFile(stateDir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, NamesFile(stateDir))
}

// ReadNames reads the names file; none (no agent) is empty names.
func ReadNames(stateDir string) (Names, error) {
	n := Names{Identities: map[uint32]string{}, Pods: map[netip.Addr]string{}}
	b, err := os.ReadFile(NamesFile(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return n, nil
	}
	if err != nil {
		return n, err
	}
	if err := json.Unmarshal(b, &n); err != nil {
		return n, fmt.Errorf("%s: %w", NamesFile(stateDir), err)
	}
	return n, nil
}

// Identity names identity id: a reserved one by its role, another by what
// the names say, else by its number.
func (n Names) Identity(id uint32) string {
	switch id {
	case pmaps.IdentityAny:
		return "any"
	case pmaps.IdentityHost:
		return "host"
	case pmaps.IdentityWorld:
		return "world"
	case pmaps.IdentityRemoteNode:
		return "remote-node"
	}
	if s, ok := n.Identities[id]; ok {
		return s
	}
	return "#" + strconv.FormatUint(uint64(id), 10)
}
