//go:build !detour_lean

package main

import (
	"github.com/detour-mesh/detour/cni"
	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/backends"
)

// options are the plugin's with every backend, eBPF included: this build
// serves every call itself.
func options() cni.Options {
	return cni.Options{
		Drivers: func(o cni.RedirectorOptions, backend redirect.Backend) []redirect.Driver {
			return backends.All(ebpfOptions(o, backend))
		},
		RemoveEBPFEnrolment: func(o cni.RedirectorOptions, cookie uint64) error {
			return backends.RemoveEBPFNetns(ebpfOptions(o, cni.AnyBackend), cookie)
		},
		EBPFReady: backends.EBPFReady,
	}
}

// ebpfOptions are the Drivers' options for a call in the pod's network
// namespace: the eBPF backend's network-namespace scope, with its pins and
// cgroup root from the plugin config.
func ebpfOptions(o cni.RedirectorOptions, backend redirect.Backend) backends.Options {
	return backends.Options{Logger: o.Logger, Backend: backend, EBPF: backends.EBPFNetns(o.EBPFPinDir, o.EBPFCgroupRoot)}
}
