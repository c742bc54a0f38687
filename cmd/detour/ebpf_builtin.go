//go:build !detour_lean

package main

import (
	"io"

	"github.com/detour-mesh/detour/bpf"
	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/backends"
)

// engine returns the redirect engine for the namespace at nsPath ("" = ours)
// and a call that asks for backend (netfilter.AnyBackend: uninstall,
// status), with every backend, eBPF included.
func (g *globalOptions) engine(nsPath string, backend redirect.Backend, stderr io.Writer) (*redirect.Engine, error) {
	if g.ebpfEnvErr != nil {
		return nil, g.ebpfEnvErr
	}
	return backends.Engine(nsPath, backends.Options{LockWait: g.lockWait, Logger: g.logger(stderr), Backend: backend,
		EBPF: bpf.DriverOptions{Cgroup: g.cgroup, Loader: bpf.Options{PinDir: g.bpfPinDir, Root: g.bpfRoot}}}), nil
}

// checkCgroup reports whether path is a cgroup v2 directory.
func checkCgroup(path string) error { return bpf.CheckCgroup(path) }

// handOverEarly does nothing: this build has the eBPF backend.
func handOverEarly([]string) {}
