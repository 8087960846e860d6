// Package runtimetest runs podpath under real container runtimes: cnitool
// driving podpath-cni the way libcni does, and containerd with runc creating
// pods through the CRI, exactly as kubelet would. The tests run as root, each
// in a node network namespace of its own with its own pin root, state, CNI
// configuration and binaries; docs/containerd.md describes the same set-up
// for a real host.
package runtimetest
