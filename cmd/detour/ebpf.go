package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/ebpfpins"
	"github.com/detour-mesh/detour/redirect"
)

// The eBPF backend in a binary of its own. cilium/ebpf, which the eBPF
// backend is built on, costs every start of a binary that links it a few
// milliseconds (its package initialization and the page faults of the code
// that runs; docs/startup.md has the figures). `make build` therefore builds
// detour twice from this package: bin/detour with -tags detour_lean, which
// links the netfilter backends only, and bin/detour-ebpf without the tag,
// the whole CLI with the eBPF backend. A lean detour hands a command that
// needs the eBPF backend to detour-ebpf (ebpf_lean.go) by exec: the same
// process, so no child process, with the same arguments and the stdin
// document a --config - already read. A build without the tag (`go build
// ./cmd/detour`, `go install`) is the whole CLI and hands nothing over.

// ebpfBinary serves a lean detour's commands that need the eBPF backend.
const ebpfBinary = "detour-ebpf"

// ebpfInboundTable begins the name of every nftables table of the eBPF
// backend's inbound share (backends.EBPFInboundTable, which the lean build
// cannot import; TestEBPFInboundTableName keeps the two the same).
const ebpfInboundTable = "detour_ebpf_inbound"

// needsEBPF says why a command of a lean build needs the eBPF backend, or
// "" when it does not: an install, plan or check with backend ebpf, anything
// with --cgroup (only the eBPF backend has cgroup scopes), and every command
// while the eBPF backend holds state on this node (its pinned maps exist:
// auto's stickiness, uninstall and status across every backend, and a switch
// away from ebpf must see it). The last is what the eBPF Driver's own
// Observe looks at first: no maps directory, nothing installed.
func (g *globalOptions) needsEBPF(backend redirect.Backend) string {
	switch {
	case backend == redirect.BackendEBPF:
		return "backend ebpf"
	case g.cgroup != "":
		return "--cgroup"
	}
	// A user who may not look into the (root-only) bpffs could not use the
	// eBPF backend's state either: that is no reason to need detour-ebpf
	// (an unprivileged `detour plan` must work without it).
	if maps, err := ebpfpins.Maps(g.bpfPinDir); !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, fs.ErrPermission) {
		return "the eBPF backend's maps are pinned at " + maps
	}
	return ""
}

// earlyEBPF says why the command line or the environment plainly asks for the
// eBPF backend ("" when they do not): --backend ebpf, --cgroup, or
// DETOUR_BACKEND=ebpf. It reads the arguments without parsing them, so it
// can be wrong only in taking some other argument for one of these, which
// costs a needless hand-over, never a wrong result: detour-ebpf is the same
// CLI. A backend a config file names is found later, by engine.
func earlyEBPF(args []string, lookup func(string) (string, bool)) string {
	for i, a := range args {
		switch {
		case a == "--":
			return ""
		case a == "--backend=ebpf", a == "--backend" && i+1 < len(args) && args[i+1] == "ebpf":
			return "--backend ebpf"
		case a == "--cgroup", strings.HasPrefix(a, "--cgroup="):
			return "--cgroup"
		}
	}
	if v, ok := lookup("DETOUR_BACKEND"); ok && strings.TrimSpace(v) == string(redirect.BackendEBPF) {
		return "DETOUR_BACKEND=ebpf"
	}
	return ""
}

// delegateEBPF execs detour-ebpf with detour's arguments, after putting the
// document a --config - read back on stdin, and each config file that could
// be read only once (a pipe) into a file of its own that the arguments name
// instead. It returns only on failure.
func (g *globalOptions) delegateEBPF(why string, logger *slog.Logger) error {
	logger.Debug("the eBPF backend is in "+ebpfBinary+": handing the command over", "why", why)
	if g.stdinDoc != nil {
		if err := refeedStdin(g.stdinDoc); err != nil {
			return fmt.Errorf("hand the command to %s: %w", ebpfBinary, err)
		}
	}
	for _, p := range g.pipeDocs {
		path, err := refeedFile(p.doc)
		if err != nil {
			return fmt.Errorf("hand the command to %s: %w", ebpfBinary, err)
		}
		g.delegate.args = replaceConfigArg(g.delegate.args, p.name, path)
		if v, ok := os.LookupEnv("DETOUR_CONFIG"); ok {
			files := strings.Split(v, ",")
			for i := range files {
				if files[i] == p.name {
					files[i] = path
				}
			}
			if err := os.Setenv("DETOUR_CONFIG", strings.Join(files, ",")); err != nil {
				return fmt.Errorf("hand the command to %s: %w", ebpfBinary, err)
			}
		}
	}
	return g.delegate.run(delegatedCommand{name: "with the eBPF backend", binary: ebpfBinary})
}

// replaceConfigArg returns args with every --config value equal to name
// (`--config NAME`, `--config=NAME`) replaced by path, up to a "--".
func replaceConfigArg(args []string, name, path string) []string {
	out := slices.Clone(args)
	for i := 0; i < len(out); i++ {
		switch {
		case out[i] == "--":
			return out
		case out[i] == "--config" && i+1 < len(out) && out[i+1] == name:
			out[i+1] = path
			i++
		case out[i] == "--config="+name:
			out[i] = "--config=" + path
		}
	}
	return out
}

// refeedStdin makes doc the process's stdin: an unlinked temporary file
// (any size, unlike a pipe's buffer) at offset 0 on descriptor 0.
func refeedStdin(doc []byte) error {
	f, err := os.CreateTemp("", "detour-stdin-")
	if err != nil {
		return err
	}
	defer f.Close()
	if err := os.Remove(f.Name()); err != nil {
		return err
	}
	if _, err := f.Write(doc); err != nil {
		return err
	}
	if _, err := f.Seek(0, 0); err != nil {
		return err
	}
	return unix.Dup2(int(f.Fd()), 0)
}

// handOverError is a command the lean detour began and must hand to
// detour-ebpf after all (stillLean): nothing was changed, and run calls hand
// once the command has returned and its locks are released.
type handOverError struct {
	why  string
	hand func() error // execs detour-ebpf; returns only when that fails
}

func (e *handOverError) Error() string {
	return "hand the command over to " + ebpfBinary + ": " + e.why
}
