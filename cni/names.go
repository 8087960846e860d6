package cni

import (
	"crypto/sha256"
	"encoding/hex"
)

// hostVethPrefix starts the name of every host-side veth podpath creates.
const hostVethPrefix = "pp"

// HostVethName is the node-side name of an attachment's veth: "pp" and the
// first 11 hex digits of sha256(containerID/ifname), 13 characters, within
// the kernel's 15. Derived, not stored, so DEL and GC find it without state.
func HostVethName(containerID, ifname string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifname))
	return hostVethPrefix + hex.EncodeToString(sum[:])[:11]
}

// vethAlias marks a host veth as belonging to a podpath network, so GC can
// tell its own stale veths from anybody else's devices.
func vethAlias(network string) string {
	a := "podpath:" + network
	if len(a) > 255 {
		a = a[:255]
	}
	return a
}
