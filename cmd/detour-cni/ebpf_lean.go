//go:build detour_lean

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/detour-mesh/detour/cni"
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

// handOver execs detour-cni-ebpf in place of this process, with the same
// arguments and CNI_* environment, and stdin, which skel has read, given
// back as a memfd. It returns only on failure.
func handOver(_ string, stdin []byte) error {
	path, err := findEBPFPlugin(os.Executable, os.Getenv("CNI_PATH"))
	if err != nil {
		return err
	}
	if err := refeedStdin(stdin); err != nil {
		return fmt.Errorf("hand the call to %s: %w", path, err)
	}
	if err := syscall.Exec(path, append([]string{path}, os.Args[1:]...), os.Environ()); err != nil {
		return fmt.Errorf("run %s: %w", path, err)
	}
	return nil
}

// findEBPFPlugin returns detour-cni-ebpf next to this binary (where `detour
// cni install` puts it), else in a directory of cniPath (CNI_PATH, the
// runtime's plugin search path).
func findEBPFPlugin(executable func() (string, error), cniPath string) (string, error) {
	var dirs []string
	if exe, err := executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		dirs = append(dirs, filepath.Dir(exe))
	}
	dirs = append(dirs, filepath.SplitList(cniPath)...)
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, ebpfPlugin)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is neither next to detour-cni nor in CNI_PATH %q: install it there (detour cni install copies it, make build builds bin/%s)", ebpfPlugin, cniPath, ebpfPlugin)
}
