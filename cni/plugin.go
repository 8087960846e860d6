// Package cni is podpath's CNI plugin (spec 1.1.0): it connects pods to the
// node's eBPF datapath. ADD creates a veth pair, gives the pod a /32 from
// a file-based pool and a link-local gateway that is the host end, registers
// the pod in the endpoints map and attaches from_pod to the host end; DEL,
// CHECK, STATUS and GC undo, verify, report and sweep that.
package cni

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// About is printed when the plugin is run without CNI_COMMAND.
const About = "podpath CNI plugin: pods on the podpath eBPF datapath"

// Funcs are the plugin's verbs, for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: Add, Del: Del, Check: Check, Status: Status, GC: GC}
}
