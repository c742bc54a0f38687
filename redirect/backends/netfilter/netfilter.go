package netfilter

import (
	"log/slog"
	"time"

	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/iptables"
	"github.com/detour-mesh/detour/redirect/nftables"
)

// AnyBackend is the Backend of the calls that read or remove detour's state
// in every backend and install with none (uninstall, status), to which the
// order of the Drivers decides nothing.
const AnyBackend redirect.Backend = "any"

// Options are what the netfilter Drivers need from the command line.
type Options struct {
	// LockWait bounds the Drivers' own lock waits (the xtables lock); 0 = 10s.
	LockWait time.Duration
	Logger   *slog.Logger // nil = discard
	// Backend is the backend the call asks for. It says whether the order of
	// the iptables Drivers matters: for auto (and "") and iptables, which
	// pick by it, the host's default iptables is looked up (a PATH search,
	// and `iptables -V`, a child process, where the binary's name does not
	// tell); for any other backend, and for AnyBackend, it is not.
	Backend redirect.Backend
}

// Drivers returns the iptables Drivers, the one plain `iptables` uses on this
// host first when the order matters, then nftables (chosen by auto where no
// iptables backend works, as on a distribution without iptables, or where
// only native nftables tables of other tools are there).
func Drivers(o Options) []redirect.Driver {
	var out []redirect.Driver
	switch o.Backend {
	case "", redirect.BackendAuto, redirect.BackendIPTables:
		out = append(out, iptables.Drivers(o.LockWait, o.Logger)...)
	default:
		out = append(out, iptables.DriversAnyOrder(o.LockWait, o.Logger)...)
	}
	return append(out, nftables.New(nftables.Options{Logger: o.Logger}))
}
