package cni

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/podpath/podpath/maps"
)

// Error codes of this plugin, beyond the ones the CNI spec defines
// (1-99). Runtimes show them with the message; docs/cni.md lists them.
const (
	// CodePoolExhausted: every address of the pod CIDR is allocated.
	CodePoolExhausted uint = 100
	// CodeDatapathNotLoaded: the node's maps or programs are not pinned
	// (`podpath node init` has not run, or the node was reset).
	CodeDatapathNotLoaded uint = 101
	// CodeEndpointMapFull: the endpoints map has no room for another pod.
	CodeEndpointMapFull uint = 102
	// CodeCheckFailed: CHECK found the attachment differs from what ADD set up.
	CodeCheckFailed uint = 103
	// CodeHostPortConflict: a requested hostPort is already another pod's or
	// a service's (NodePort, other frontend).
	CodeHostPortConflict uint = 104
)

func newError(code uint, format string, a ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, a...), "")
}

func invalidConfig(format string, a ...any) *types.Error {
	return newError(types.ErrInvalidNetworkConfig, format, a...)
}

// datapathError gives errors from the pinned datapath the code a runtime can
// act on, keeping the message.
func datapathError(err error) error {
	var e *types.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &e):
		return e
	case errors.Is(err, maps.ErrNotLoaded):
		return newError(CodeDatapathNotLoaded, "%v", err)
	case errors.Is(err, maps.ErrMapFull):
		return newError(CodeEndpointMapFull, "%v", err)
	}
	return err
}
