//go:build detour_lean

package main

import (
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/backends/netfilter"
	"github.com/detour-mesh/detour/redirect/nftables"
)

// engine returns the redirect engine for the namespace at nsPath ("" = ours)
// and a call that asks for backend (netfilter.AnyBackend: uninstall,
// status), with the netfilter backends. A command that needs the eBPF
// backend is handed to detour-ebpf instead (ebpf.go): engine returns only
// when that fails.
func (g *globalOptions) engine(nsPath string, backend redirect.Backend, stderr io.Writer) (*redirect.Engine, error) {
	if g.ebpfEnvErr != nil {
		return nil, g.ebpfEnvErr
	}
	logger := g.logger(stderr)
	if why := g.needsEBPF(backend); why != "" {
		return nil, g.delegateEBPF(why, logger)
	}
	if t := ebpfInboundTableIn(nsPath); t != "" {
		return nil, g.delegateEBPF("the eBPF backend's inbound table inet "+t+" is in the namespace", logger)
	}
	return &redirect.Engine{Logger: logger, NetNS: nsPath, LockWait: g.lockWait,
		Drivers: netfilter.Drivers(netfilter.Options{LockWait: g.lockWait, Logger: logger, Backend: backend}),
		Locked:  func() error { return g.stillLean(backend, logger) }}, nil
}

// stillLean looks again, holding the namespace's lock (Engine.Locked, on
// the thread inside it), at what made engine keep the command here: an
// install of the eBPF backend may have taken the lock first and pinned its
// maps or made its inbound table since. Going on without the eBPF Driver
// would leave its scope beside this backend's rules (two backends, each
// install saying exit 0). It returns a handOverError then, which run turns
// into the hand-over to detour-ebpf once the lock is released.
func (g *globalOptions) stillLean(backend redirect.Backend, logger *slog.Logger) error {
	why := g.needsEBPF(backend)
	if why == "" {
		if t := ebpfInboundTableIn(""); t != "" {
			why = "the eBPF backend's inbound table inet " + t + " is in the namespace"
		}
	}
	if why == "" {
		return nil
	}
	return &handOverError{why: why + " (seen once the namespace's lock was held)", hand: func() error { return g.delegateEBPF(why, logger) }}
}

// ebpfRootToJoin is "": a command with the eBPF backend runs in detour-ebpf.
func (g *globalOptions) ebpfRootToJoin(redirect.Backend) string { return "" }

// checkCgroup accepts any path: --cgroup hands the command to detour-ebpf,
// which checks it (exit 2 when it is not a cgroup v2 directory).
func checkCgroup(string) error { return nil }

// cgroupIsRoot is false: --cgroup hands the command to detour-ebpf, which
// refuses the root of the hierarchy.
func cgroupIsRoot(string) bool { return false }

// handOverEarly execs detour-ebpf at once when the command line, the
// environment or the node plainly needs the eBPF backend, before the lean
// build spends anything on the command (earlyEBPF); it returns when nothing
// does, or when the exec fails (the command then runs here and engine
// reports the failure if it needs the eBPF backend).
func handOverEarly(args []string) {
	g := &globalOptions{delegate: newDelegator(args), bpfPinDir: os.Getenv("DETOUR_EBPF_PIN_DIR")}
	why := earlyEBPF(args, os.LookupEnv)
	if why == "" {
		why = g.needsEBPF("")
	}
	if why == "" {
		return
	}
	// -v is not parsed yet: log the hand-over as engine does when it is there.
	g.verbose = slices.Contains(args, "-v") || slices.Contains(args, "--verbose")
	_ = g.delegateEBPF(why, g.logger(os.Stderr))
}

// ebpfInboundTableIn names an inbound table of the eBPF backend in the
// network namespace at nsPath ("" = ours), or "". Such a table can be there
// with nothing pinned (a cgroup scope's, once its cgroup was removed and
// another scope's uninstall swept every pin): it still redirects inbound
// connections, and only detour-ebpf reads and removes it. A namespace that
// cannot be read (no privileges: an unprivileged plan) has none to tell of.
func ebpfInboundTableIn(nsPath string) string {
	fd := 0
	if nsPath != "" {
		f, err := os.Open(nsPath)
		if err != nil {
			return ""
		}
		defer f.Close()
		fd = int(f.Fd())
	}
	tables, err := nftables.InetTables(fd)
	if err != nil {
		return ""
	}
	for _, t := range tables {
		if strings.HasPrefix(t, ebpfInboundTable) {
			return t
		}
	}
	return ""
}
