// Package backends assembles the Drivers detour is built with, in the order
// `backend auto` prefers them: the one place that names every backend, so
// adding one is one line here. cmd/detour and cni use it; redirect does not
// (it only knows the redirect.Driver interface).
package backends

import (
	"log/slog"
	"time"

	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/iptables"
)

// Options are what the Drivers need from the command line.
type Options struct {
	// LockWait bounds the Drivers' own lock waits (the xtables lock); 0 = 10s.
	LockWait time.Duration
	Logger   *slog.Logger // nil = discard
}

// All returns every Driver of this build in auto's order of preference:
// the iptables backends, the one plain `iptables` uses on this host first.
func All(o Options) []redirect.Driver {
	var out []redirect.Driver
	out = append(out, iptables.Drivers(o.LockWait, o.Logger)...)
	return out
}

// Engine is a redirect.Engine for the network namespace at netns ("" = the
// caller's) with every Driver of this build.
func Engine(netns string, o Options) *redirect.Engine {
	return &redirect.Engine{Logger: o.Logger, NetNS: netns, LockWait: o.LockWait, Drivers: All(o)}
}
