package main

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/detour-mesh/detour/cni"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) > 1 {
		// A command line, not a container runtime: the plugin takes none.
		fmt.Fprintln(os.Stderr, "detour-cni: the CNI plugin takes no arguments: a container runtime runs it with the CNI_* variables and the network configuration on stdin (docs/cni.md); the node installer is `detour cni install`")
		os.Exit(2)
	}
	p := cni.New(options())
	skel.PluginMainFuncs(p.Funcs(), cni.SupportedVersions(), "detour-cni "+version+": redirects a pod's traffic to its sidecar proxy")
}
