//go:build linux

package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
	detourbackends "github.com/detour-mesh/detour/redirect/backends"
)

// TestUninstallCgroupOfARemovedCgroup: a cgroup scope that captured inbound,
// whose cgroup directory was removed before `uninstall --cgroup`, is removed
// by `uninstall --cgroup PATH` of that path — its inbound table, its entries
// and pins — as what was left behind, while the namespace's own capture (the
// eBPF network-namespace scope without inbound) stays; a second run has
// nothing to remove, and other commands still refuse a path that is gone
// (exit 2).
func TestUninstallCgroupOfARemovedCgroup(t *testing.T) {
	privtest.Require(t, "ip", "nft")
	p := newPod(t, variant{family: lab.IPv4, backend: ebpfBackend, mode: "redirect"})
	cg := filepath.Join(ebpfNode.cgroup, fmt.Sprintf("gone-%d", p.rnd.Uint32(1, 1<<30)))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(cg) }) // gone already unless the test failed early
	nsCapture := p.withFlags("install", "--inbound=false")
	if r := p.detourCmd(nil, nsCapture...); r.code != 0 {
		t.Fatalf("install of the namespace's capture:\n%s", r)
	}
	t.Cleanup(func() { p.detourCmd(nil, "uninstall") })
	if r := p.detourCmd(nil, p.withFlags("install", "--cgroup", cg)...); r.code != 0 {
		t.Fatalf("install --cgroup with inbound:\n%s", r)
	}
	table := detourbackends.EBPFInboundTableFor(cg)
	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	if r := p.detourCmd(nil, "status", "--cgroup", cg); r.code != 2 || !strings.Contains(r.stderr, "uninstall --cgroup") {
		t.Errorf("status --cgroup of the removed cgroup: want exit 2 naming `uninstall --cgroup`:\n%s", r)
	}
	// The kernel releases the cgroup (and detaches its programs) a moment
	// after the rmdir: until then its scope's entries are not known to be
	// gone, and a run removes the table only.
	var out []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r := p.detourCmd(nil, "uninstall", "--cgroup", cg)
		if r.code != 0 {
			t.Fatalf("uninstall --cgroup of the removed cgroup: want exit 0:\n%s", r)
		}
		out = append(out, r.stdout)
		if strings.Contains(r.stdout, "cgroup id") {
			break
		}
		if time.Now().After(deadline) {
			break
		}
	}
	t.Logf("uninstall --cgroup of the removed cgroup:\n%s", strings.Join(out, ""))
	if all := strings.Join(out, ""); !strings.Contains(all, table) || !strings.Contains(all, "cgroup id") {
		t.Errorf("uninstall --cgroup of the removed cgroup: want its table %s and its scope named as removed:\n%s", table, all)
	}
	if got := nftTables(p); strings.Contains(got, table) {
		t.Errorf("after uninstall --cgroup of the removed cgroup, its table is still there:\n%s", got)
	}
	if r := p.detourCmd(nil, p.withFlags("check", "--inbound=false")...); r.code != 0 {
		t.Errorf("check of the namespace's capture after uninstall --cgroup of the removed cgroup: want exit 0 (untouched):\n%s", r)
	}
	if r := p.detourCmd(nil, "uninstall", "--cgroup", cg); r.code != 0 || !strings.Contains(r.stdout, "nothing to remove") {
		t.Errorf("second uninstall --cgroup of the removed cgroup: want exit 0, nothing to remove:\n%s", r)
	}
	if r := p.detourCmd(nil, "uninstall"); r.code != 0 {
		t.Errorf("uninstall of the namespace's capture:\n%s", r)
	}
	if left := pinsLeft(t, p.env); len(left) > 0 {
		t.Errorf("after both uninstalls, BPF pins of detour remain: %q", left)
	}
}
