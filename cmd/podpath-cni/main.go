// Command podpath-cni is the CNI plugin of podpath. Install it in the
// runtime's CNI bin directory; network configurations name it with
// "type": "podpath-cni" (see docs/cni.md).
package main

import (
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/podpath/podpath/cni"
)

func main() {
	// stdout carries the result; logs go to stderr, which runtimes keep.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)).With("plugin", "podpath-cni"))
	skel.PluginMainFuncs(cni.Funcs(), cni.Versions, cni.About)
}
