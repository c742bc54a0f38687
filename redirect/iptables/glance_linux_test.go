package iptables

import (
	"context"
	"testing"

	"github.com/detour-mesh/detour/internal/netns"
	"github.com/detour-mesh/detour/redirect"
)

// glance is the driver's Glance inside the namespace, failing t on an error.
func glance(t *testing.T, ns string, d *Driver) bool {
	t.Helper()
	var maybe bool
	err := netns.Do(ns, func() (err error) {
		maybe, err = d.Glance(context.Background())
		return err
	})
	if err != nil {
		t.Fatalf("Glance: %v", err)
	}
	return maybe
}

// observed is what Observe sees inside the namespace.
func observed(t *testing.T, ns string, d *Driver) redirect.Installed {
	t.Helper()
	var have redirect.Installed
	err := netns.Do(ns, func() (err error) {
		have, err = d.Observe(context.Background())
		return err
	})
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	return have
}

// TestGlance: the glance, which runs no iptables-save, says "nothing of
// detour's" only where Observe (iptables-save) finds nothing of detour's and
// no conflict, and says "maybe" wherever detour's rules or a foreign DETOUR_
// chain are, so that an install with another backend still finds (and
// removes, or refuses) them.
func TestGlance(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b redirect.Backend) {
		ns, e := newNS(t)
		d := &Driver{Backend: b}
		nothing := func(step string) {
			t.Helper()
			if glance(t, ns.Path, d) {
				t.Errorf("%s: Glance = maybe, want nothing", step)
			}
			if have := observed(t, ns.Path, d); !have.Empty() || have.Conflict() != nil {
				t.Errorf("%s: Glance = nothing, but Observe: empty %v, conflict %v", step, have.Empty(), have.Conflict())
			}
		}
		maybe := func(step string) {
			t.Helper()
			if !glance(t, ns.Path, d) {
				t.Errorf("%s: Glance = nothing, want maybe (Observe: empty %v, conflict %v)", step, observed(t, ns.Path, d).Empty(), observed(t, ns.Path, d).Conflict())
			}
		}

		nothing("fresh namespace")
		for _, f := range allFamilies {
			for _, table := range []string{"nat", "mangle", "raw", "filter"} {
				ns.Run(t, cliName(b, f), "-t", table, "-S") // makes the empty tables
			}
		}
		nothing("empty tables")

		p := mustPlan(t, withBackend(t, cfgWith(t, "", "dns.capture=all", "dropInvalidPackets=true", "mode=tproxy"), b), dualStack)
		mustInstall(t, e, p)
		maybe("installed")
		mustUninstall(t, e)
		nothing("uninstalled")

		// One hook of detour's alone, in a built-in chain, and no chain of
		// detour's: still detour's to remove.
		for _, f := range allFamilies {
			ns.Run(t, cliName(b, f), "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-m", "comment", "--comment", "detour", "-j", "RETURN")
		}
		if observed(t, ns.Path, d).Empty() {
			t.Fatal("a rule with detour's comment is not detour's: the test's premise is wrong")
		}
		maybe("a hook of detour's alone")
		for _, f := range allFamilies {
			ns.Run(t, cliName(b, f), "-t", "mangle", "-F", "PREROUTING")
		}
		nothing("hook flushed")

		// A DETOUR_ chain detour did not make: Conflict must see it.
		ns.Run(t, cliName(b, redirect.IPv6), "-t", "nat", "-N", "DETOUR_SOMEONE_ELSES")
		if observed(t, ns.Path, d).Conflict() == nil {
			t.Fatal("a foreign DETOUR_ chain is no conflict: the test's premise is wrong")
		}
		maybe("a foreign DETOUR_ chain")
	})
}
