package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/detour-mesh/detour/cni"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) > 1 {
		// A command line, not a container runtime: the node installer
		// (`detour cni …` runs this binary with its own arguments).
		os.Exit(runCLI(os.Args[1:]))
	}
	p := cni.New(cni.Options{})
	skel.PluginMainFuncs(p.Funcs(), cni.SupportedVersions(), "detour-cni "+version+": redirects a pod's traffic to its sidecar proxy")
}
