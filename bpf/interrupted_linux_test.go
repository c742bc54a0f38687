package bpf

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

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
	eng := l.engine(t, "")
	cfg := outboundConfig()
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
		l.assertNoResidue(t, tt.name+", then uninstall")

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
		l.assertNoResidue(t, tt.name+", re-run, then uninstall")
	}
}

// TestScopeOfARemovedCgroupIsCleanedUp: a cgroup scope outlives its cgroup
// when the service's cgroup is removed (a transient unit, a stopped
// service) before `uninstall --cgroup`: the kernel detaches the programs,
// but the scope's entries, its links' pins and the maps stayed, and no
// command could remove them (`uninstall --cgroup PATH` needs the directory;
// `uninstall` left cgroup scopes alone). `status` names them, and another
// scope's install or `uninstall` removes them.
func TestScopeOfARemovedCgroupIsCleanedUp(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	cfg := outboundConfig()
	plan, err := redirect.NewPlan(cfg, redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	// goneScope installs a cgroup scope and removes its cgroup.
	goneScope := func(name string) {
		t.Helper()
		cg := filepath.Join(l.cgroup, name)
		if err := os.Mkdir(cg, 0o755); err != nil {
			t.Fatal(err)
		}
		_, err := l.engine(t, cg).Install(ctx, plan)
		if rerr := os.Remove(cg); rerr != nil {
			t.Fatal(rerr)
		}
		if err != nil {
			t.Fatal(err)
		}
		// The kernel releases the cgroup, and detaches its links, asynchronously.
		pins, _ := filepath.Glob(filepath.Join(l.pinDir, "links", "cgroup@*", "*"))
		if len(pins) == 0 {
			t.Fatal("no link of the cgroup scope is pinned")
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			lk, err := link.LoadPinnedLink(pins[0], nil)
			if err != nil {
				t.Fatal(err)
			}
			info, err := lk.Info()
			lk.Close()
			if err != nil {
				t.Fatal(err)
			}
			if c := info.Cgroup(); c != nil && c.CgroupId == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the removed cgroup's links are still attached after 5s")
			}
		}
	}
	netns := l.engine(t, "")

	goneScope("service")
	st, err := netns.Status(ctx)
	if err != nil || st.Installed || !strings.Contains(strings.Join(st.Leftovers, " "), "cgroup that is gone") {
		t.Errorf("status = %+v, %v; want not installed, naming the scope of the cgroup that is gone", st, err)
	}
	res, err := netns.Uninstall(ctx)
	if err != nil || !res.Changed || !strings.Contains(strings.Join(res.Leftovers, " "), "cgroup that is gone") {
		t.Errorf("uninstall = %+v, %v; want the scope of the cgroup that is gone removed", res, err)
	}
	if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
		t.Errorf("pins left after uninstall: %q", left)
	}

	// Another scope's install removes it too, so the scope of a gone cgroup
	// need not wait for an uninstall of everything.
	goneScope("service2")
	if _, err := netns.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if dirs, _ := filepath.Glob(filepath.Join(l.pinDir, "links", "cgroup@*")); len(dirs) != 0 {
		t.Errorf("the gone cgroup's link pins are still there after another scope's install: %q", dirs)
	}
	if _, err := netns.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
		t.Errorf("pins left after uninstall: %q", left)
	}
}

// TestTooManyUIDPortRulesChangesNothing: more per-uid port rules than the
// programs hold is invalid input (redirect.ErrInvalid: the CLI's exit 2),
// found before anything is pinned. It was a plain error (exit 1) after the
// maps were created and pinned, which then belonged to no scope.
func TestTooManyUIDPortRulesChangesNothing(t *testing.T) {
	l := newLab(t)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	c := testCapture(t, func(c *redirect.Config) {
		for i := range MaxUIDPortRules + 1 {
			c.Outbound.ExcludePortsForUIDs = append(c.Outbound.ExcludePortsForUIDs, redirect.UIDPortRule{
				Protocol: redirect.TCP, Ports: []redirect.PortRange{{First: uint16(1000 + i), Last: uint16(1000 + i)}},
				UIDs: []redirect.IDRange{{First: uint32(2000 + i), Last: uint32(2000 + i)}}})
		}
	})
	_, err := ld.Apply(Scope{Cgroup: l.cgroup}, c)
	if !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), "outbound.excludePortsForUIDs") {
		t.Errorf("Apply with %d tcp rules = %v; want ErrInvalid naming outbound.excludePortsForUIDs", MaxUIDPortRules+1, err)
	}
	if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
		t.Errorf("the refused install pinned %q", left)
	}
}

// TestFailedFirstInstallLeavesNoPins: an install that fails is exit 1 with
// the host as it was. A first install whose cgroup scope names no cgroup
// directory (a file of the cgroup filesystem, such as its cgroup.procs), or
// whose programs cannot be attached, pinned the maps before failing; they
// belonged to no scope, `status` reported them as left behind, and every
// later command of the lean detour was handed to detour-ebpf because of them.
func TestFailedFirstInstallLeavesNoPins(t *testing.T) {
	l := newLab(t)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})

	file := filepath.Join(l.cgroup, "cgroup.procs")
	_, err := ld.Apply(Scope{Cgroup: file}, testCapture(t, nil))
	if err == nil || !strings.Contains(err.Error(), "not a cgroup v2 directory") {
		t.Errorf("Apply to the scope of %s = %v; want an error saying it is not a cgroup v2 directory", file, err)
	}
	l.assertNoResidue(t, "a file for the cgroup")
	os.RemoveAll(l.pinDir) // what the case above left, so the next starts clean

	// The links' pin directory cannot be made (a pinned map is where it
	// goes): the attach fails after the maps were pinned.
	if err := os.MkdirAll(l.pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	obstacle, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	err = obstacle.Pin(filepath.Join(l.pinDir, "links"))
	obstacle.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ld.Apply(Scope{Cgroup: l.cgroup}, testCapture(t, nil)); err == nil {
		t.Fatal("Apply with its links' pin directory blocked succeeded")
	}
	l.assertNoResidue(t, "an attach that failed")

	// The same install then works, and its removal leaves nothing.
	if _, err := ld.Apply(Scope{Cgroup: l.cgroup}, testCapture(t, nil)); err != nil {
		t.Fatalf("Apply after the failed one: %v", err)
	}
	if err := ld.Remove(Scope{Cgroup: l.cgroup}); err != nil {
		t.Fatal(err)
	}
	l.assertNoResidue(t, "install, then remove")
}

// assertNoResidue: nothing of detour's is pinned in the lab's bpffs and no
// program is attached to its cgroup.
func (l lab) assertNoResidue(t *testing.T, what string) {
	t.Helper()
	if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
		t.Errorf("%s: pins left: %q", what, left)
	}
	for attach, ids := range attachedIDs(t, l.cgroup) {
		t.Errorf("%s: programs %v still attached to the cgroup (%s)", what, ids, attach)
	}
}

// TestDetachedLinkOfALiveCgroupIsNotGone: a cgroup scope's link detached by
// hand (`bpftool link detach`) reads cgroup id 0, as the links of a removed
// cgroup do. Before, status called the live cgroup's scope "the scope of a
// cgroup that is gone (… removed before `detour uninstall --cgroup`)" and
// the next install or uninstall of any scope removed it, detaching its
// other programs: the service's capture stopped. A cgroup that is still
// there keeps its scope, a re-install attaches the link again, and once the
// cgroup is removed its scope is gone.
func TestDetachedLinkOfALiveCgroupIsNotGone(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	plan, err := redirect.NewPlan(outboundConfig(), redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	svc := filepath.Join(l.cgroup, "svc")
	if err := os.Mkdir(svc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(svc) })
	cgroup, netns := l.engine(t, svc), l.engine(t, "")
	if _, err := cgroup.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	attached := 0
	for _, ids := range attachedIDs(t, svc) {
		attached += len(ids)
	}
	pins, _ := filepath.Glob(filepath.Join(l.pinDir, "links", "cgroup@*", "*"))
	if len(pins) == 0 {
		t.Fatal("no link of the cgroup scope is pinned")
	}
	slices.Sort(pins)
	lk, err := link.LoadPinnedLink(pins[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := lk.Detach(); err != nil {
		t.Fatal(err)
	}
	lk.Close()
	st, err := netns.Status(ctx)
	if err != nil || strings.Contains(strings.Join(st.Leftovers, " "), "cgroup that is gone") {
		t.Errorf("status = %+v, %v; want no scope of a cgroup that is gone: %s is there", st, err, svc)
	}
	// Another scope's install and uninstall leave it.
	if _, err := netns.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if res, err := netns.Uninstall(ctx); err != nil || len(res.Leftovers) != 0 {
		t.Errorf("uninstall of the network-namespace scope = %+v, %v; want nothing of the cgroup scope removed", res, err)
	}
	left := 0
	for _, ids := range attachedIDs(t, svc) {
		left += len(ids)
	}
	if left != attached-1 {
		t.Errorf("%d programs on the live cgroup after another scope's install and uninstall; want %d (all but the one detached by hand)", left, attached-1)
	}
	// check sees the program that is not attached.
	prog := "program " + strings.TrimPrefix(filepath.Base(pins[0]), "detour_") + " "
	d, err := cgroup.Check(ctx, plan)
	if err != nil || len(d.Families) == 0 || !slices.ContainsFunc(d.Families[0].Missing, func(l string) bool { return strings.HasPrefix(l, prog) }) {
		t.Errorf("check with a link detached by hand = %+v, %v; want %q… missing", d, err, prog)
	}
	if _, err := cgroup.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	again := 0
	for _, ids := range attachedIDs(t, svc) {
		again += len(ids)
	}
	if again != attached {
		t.Errorf("%d programs on the cgroup after its re-install; want %d", again, attached)
	}
	if d, err := cgroup.Check(ctx, plan); err != nil || len(d.Families) != 0 {
		t.Errorf("check after the re-install = %+v, %v; want in sync", d, err)
	}
	// Removed for real: gone.
	if err := os.Remove(svc); err != nil {
		t.Fatal(err)
	}
	var res redirect.Result
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if res, err = netns.Uninstall(ctx); err != nil || len(res.Leftovers) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || !strings.Contains(strings.Join(res.Leftovers, " "), "cgroup that is gone") {
		t.Errorf("uninstall after the cgroup's removal = %+v, %v; want its scope removed", res, err)
	}
	if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
		t.Errorf("pins left: %q", left)
	}
}
