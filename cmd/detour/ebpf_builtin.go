//go:build !detour_lean

package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/detour-mesh/detour/bpf"
	"github.com/detour-mesh/detour/internal/ebpfpins"
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

// cgroupIsRoot reports whether the cgroup v2 directory path is the root of
// the hierarchy (bpf.IsHierarchyRoot).
func cgroupIsRoot(path string) bool {
	root, err := bpf.IsHierarchyRoot(path)
	return err == nil && root
}

// handOverEarly does nothing: this build has the eBPF backend.
func handOverEarly([]string) {}

// ebpfRootToJoin is the cgroup a probe (validate, explain --live) must join
// for the eBPF backend's network-namespace scope to see its sockets:
// DETOUR_EBPF_CGROUP_ROOT, when it is set, the eBPF backend is asked for or
// holds state on the node (its maps are pinned), no --cgroup is given (that
// scope's cgroup is joined instead) and this process is not below it. Its
// programs attach there and see only sockets made below it: a probe from
// elsewhere was reported "not redirected" (exit 5) while the capture worked.
// "" when there is nothing to join.
func (g *globalOptions) ebpfRootToJoin(backend redirect.Backend) string {
	if g.bpfRoot == "" || g.cgroup != "" {
		return ""
	}
	if backend != redirect.BackendEBPF {
		if _, err := ebpfpins.Maps(g.bpfPinDir); err != nil {
			return ""
		}
	}
	mount, err := bpf.CgroupRoot()
	if err != nil {
		return ""
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	root := filepath.Clean(g.bpfRoot)
	if !filepath.IsAbs(root) {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			self := filepath.Join(mount, rel)
			if self == root || strings.HasPrefix(self, root+"/") {
				return ""
			}
			return root
		}
	}
	return ""
}
