//go:build detour_lean

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/detour-mesh/detour/cni"
	"github.com/detour-mesh/detour/internal/sibling"
)

// ebpfPlugin serves the calls a lean detour-cni hands over: the same plugin
// with the eBPF backend (`make build` builds it from this package without
// the detour_lean tag). `detour cni install` copies it next to detour-cni.
const ebpfPlugin = "detour-cni-ebpf"

// options are the plugin's without the eBPF backend (the zero value's
// netfilter Drivers); a call that needs that backend is handed to
// detour-cni-ebpf.
func options() cni.Options {
	return cni.Options{HandOver: handOver}
}

// handedOver is set in the environment of a handed-over call: a lean
// plugin that finds it set was itself given the call, so the binary
// installed as detour-cni-ebpf is a lean build too, and handing over again
// would loop.
const handedOver = "DETOUR_CNI_HANDED_OVER"

// handOver execs detour-cni-ebpf in place of this process, with the same
// arguments and CNI_* environment, and stdin, which skel has read, given
// back as a memfd. It returns only on failure.
func handOver(_ string, stdin []byte) error {
	path, err := findEBPFPlugin(os.Executable, os.Getenv("CNI_PATH"))
	if err != nil {
		return err
	}
	if prev := os.Getenv(handedOver); prev != "" {
		return fmt.Errorf("%s handed the call to this binary, which is built without the eBPF backend too: install the build of cmd/detour-cni without -tags detour_lean as %s", prev, ebpfPlugin)
	}
	if err := refeedStdin(stdin); err != nil {
		return fmt.Errorf("hand the call to %s: %w", path, err)
	}
	self, _ := os.Executable()
	env := append(os.Environ(), handedOver+"="+self)
	if err := syscall.Exec(path, append([]string{path}, os.Args[1:]...), env); err != nil {
		return fmt.Errorf("run %s: %w", path, err)
	}
	return nil
}

// findEBPFPlugin returns detour-cni-ebpf next to this binary (where `detour
// cni install` puts it), else in a directory of cniPath (CNI_PATH, the
// runtime's plugin search path).
func findEBPFPlugin(executable func() (string, error), cniPath string) (string, error) {
	if p, ok := sibling.Beside(executable, ebpfPlugin); ok {
		return p, nil
	}
	for _, d := range filepath.SplitList(cniPath) {
		if p := filepath.Join(d, ebpfPlugin); d != "" && sibling.Executable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is neither next to detour-cni nor in CNI_PATH %q: install it there (detour cni install copies it, make build builds bin/%s)", ebpfPlugin, cniPath, ebpfPlugin)
}
