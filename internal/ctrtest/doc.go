// Package ctrtest runs a real container runtime for tests: containerd (with
// runc) private to one test, in the node's network namespace, with its own
// root, state, socket, CNI directories and cgroup parent; images packed
// here from local binaries (there is no registry); and the programs the
// runtime needs beside podpath-cni (the reference loopback plugin, a static
// pause program). test/runtime drives it through the CRI directly,
// test/kubelet through a real kubelet. Needs root.
package ctrtest
