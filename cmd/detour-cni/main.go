package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/detour-mesh/detour/cni"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	p := cni.New(cni.Options{})
	skel.PluginMainFuncs(p.Funcs(), cni.SupportedVersions(), "detour-cni "+version+": redirects a pod's traffic to its sidecar proxy")
}
