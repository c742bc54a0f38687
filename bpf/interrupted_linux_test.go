package bpf

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/detour-mesh/detour/redirect"
)

// TestInterruptedInstallIsCleanedUp: an install killed (kill -9, a node
// reboot of the CLI's container) before it enrolled its scope leaves pins
// that belong to no scope — some of the maps, or every map and the links.
// `status` must still answer, a re-run of the install must work, and
// `uninstall` must leave no pin and no program attached. Before, the first
// case made install fail for good ("load pinned map cidrs4: no such file or
// directory") while uninstall said "nothing to remove", and the second left
// the programs attached to the cgroup after uninstall.
func TestInterruptedInstallIsCleanedUp(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ctx := context.Background()
	eng := &redirect.Engine{
		NetNS:   l.ns.Path,
		LockDir: t.TempDir(),
		Drivers: []redirect.Driver{NewDriver(DriverOptions{Loader: Options{PinDir: l.pinDir, Root: l.cgroup}})},
	}
	cfg := redirect.Default()
	cfg.Backend = redirect.BackendEBPF
	cfg.IPFamilies = redirect.IPFamiliesDual
	cfg.Inbound.Enabled = false
	plan, err := redirect.NewPlan(cfg, redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	t.Cleanup(func() {
		if _, err := eng.Uninstall(ctx); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	// killedInOpen leaves what an install killed while it pinned its maps
	// leaves: some of them.
	killedInOpen := func() {
		t.Helper()
		st, err := ld.open()
		if err != nil {
			t.Fatal(err)
		}
		st.close()
		for _, name := range []string{"cidrs4", "cidrs6", "records"} {
			if err := os.Remove(filepath.Join(l.pinDir, "maps", name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// killedBeforeEnrolling leaves what an install killed after it attached
	// its programs, before it enrolled the namespace: every map, the links,
	// no enrolment and no record.
	killedBeforeEnrolling := func() {
		t.Helper()
		if _, err := eng.Install(ctx, plan); err != nil {
			t.Fatal(err)
		}
		var cookie uint64
		inNS(t, l.ns, func() (err error) { cookie, err = CurrentNetns(); return err })
		for _, name := range []string{"scopes", recordsMap} {
			m, err := ebpf.LoadPinnedMap(filepath.Join(l.pinDir, "maps", name), nil)
			if err != nil {
				t.Fatal(err)
			}
			err = m.Delete(cookie)
			m.Close()
			if err != nil {
				t.Fatalf("delete %s entry: %v", name, err)
			}
		}
	}
	noResidue := func(what string) {
		t.Helper()
		if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
			t.Errorf("%s: pins left: %q", what, left)
		}
		for attach, ids := range attachedIDs(t, l.cgroup) {
			t.Errorf("%s: programs %v still attached to the cgroup (%s)", what, ids, attach)
		}
	}
	notInstalled := func(what string) {
		t.Helper()
		if st, err := eng.Status(ctx); err != nil || st.Installed {
			t.Errorf("%s: Status = %+v, %v; want not installed, no error", what, st, err)
		}
	}

	for _, tt := range []struct {
		name      string
		interrupt func()
	}{
		{"killed while pinning the maps", killedInOpen},
		{"killed before enrolling", killedBeforeEnrolling},
	} {
		tt.interrupt()
		notInstalled(tt.name)
		res, err := eng.Uninstall(ctx)
		if err != nil {
			t.Fatalf("%s: uninstall: %v", tt.name, err)
		}
		if !res.Changed || !strings.Contains(strings.Join(res.Leftovers, " "), "no scope") {
			t.Errorf("%s: uninstall = %+v; want it to say it removed what belongs to no scope", tt.name, res)
		}
		noResidue(tt.name + ", then uninstall")

		// The same, then a re-run of the install: it works, and its
		// uninstall leaves nothing.
		tt.interrupt()
		if _, err := eng.Install(ctx, plan); err != nil {
			t.Fatalf("%s: re-run of the install: %v", tt.name, err)
		}
		if d, err := eng.Check(ctx, plan); err != nil || !d.Empty() {
			t.Errorf("%s: check after the re-run = %v, %v; want in sync", tt.name, d, err)
		}
		if _, err := eng.Uninstall(ctx); err != nil {
			t.Fatal(err)
		}
		noResidue(tt.name + ", re-run, then uninstall")
	}
}
