package backends

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/detour-mesh/detour/redirect"
)

// TestUninstallOfARemovedCgroup: `uninstall --cgroup PATH` of a cgroup scope
// whose cgroup directory was removed first removes that scope's inbound
// table and its entries and pins, as what was left behind, and leaves the
// namespace's own capture (nftables here) alone; an install that captures
// inbound then works, and a second uninstall of the path has nothing to do.
func TestUninstallOfARemovedCgroup(t *testing.T) {
	l := newEBPFLab(t)
	ctx := context.Background()
	cg := filepath.Join(l.root, "a")
	gone := l.engine(cg)
	if _, err := gone.Install(ctx, ebpfPlan(t, true)); err != nil {
		t.Fatal(err)
	}
	table := EBPFInboundTableFor(cg)
	netns := l.engine("")
	t.Cleanup(func() {
		if _, err := netns.Uninstall(ctx); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	// The namespace's own capture, without inbound (the cgroup scope holds it).
	noIn := dualPlan(t, redirect.BackendNFTables, false)
	if _, err := netns.Install(ctx, noIn); err != nil {
		t.Fatal(err)
	}
	// The lab's cleanup removes a: make it again at the end for that.
	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Mkdir(cg, 0o755) })
	// The kernel releases the cgroup (and detaches its links) a moment later.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := netns.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.Join(st.Leftovers, " "), "cgroup that is gone") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status after the scope's cgroup was removed: %+v; want the scope named as left behind", st)
		}
	}
	res, err := gone.Uninstall(ctx)
	if err != nil {
		t.Fatalf("uninstall of the removed cgroup's scope: %v", err)
	}
	if left := strings.Join(res.Leftovers, " "); !res.Changed || !strings.Contains(left, table) || !strings.Contains(left, "cgroup id") {
		t.Errorf("uninstall of the removed cgroup = %+v; want its inbound table %s and its scope removed as left behind", res, table)
	}
	if got := l.inboundTables(t); len(got) != 0 {
		t.Errorf("inbound tables after the uninstall of the removed cgroup: %q", got)
	}
	if d, err := netns.Check(ctx, noIn); err != nil || !d.Empty() {
		t.Errorf("the namespace's nftables capture after the uninstall of the removed cgroup: drift %v, %v; want it untouched", d, err)
	}
	if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
		t.Errorf("pins left after the uninstall of the removed cgroup's scope: %q", left)
	}
	if res, err := gone.Uninstall(ctx); err != nil || res.Changed {
		t.Errorf("second uninstall of the removed cgroup = %+v, %v; want nothing to remove", res, err)
	}
	if _, err := netns.Install(ctx, dualPlan(t, redirect.BackendNFTables, true)); err != nil {
		t.Errorf("nftables install with inbound after the removed cgroup's table went: %v", err)
	}
}
