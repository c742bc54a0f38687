package nftables

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/internal/plancases"
	"github.com/detour-mesh/detour/internal/privtest"
)

// TestTableNameKeepsDriversApart: a Driver with Options.TableName (the eBPF
// backend's inbound table) installs, observes and removes only its own table;
// the default Driver in the same namespace neither takes it for its own
// state nor counts it as another tool's, and the other way round.
func TestTableNameKeepsDriversApart(t *testing.T) {
	privtest.Require(t, "nft")
	ctx := context.Background()
	def, ns := driverIn(t)
	f, err := os.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	named := New(Options{NetNSFd: int(f.Fd()), TableName: "detour_test_inbound"})
	rs, err := Render(mustCapture(t, plancases.Case{Preset: "istio", Facts: dualStack}))
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := named.ApplyRuleset(ctx, rs, observe(t, named)); err != nil || !changed {
		t.Fatalf("apply named table: changed %v, %v", changed, err)
	}
	have := observe(t, named)
	want := &Ruleset{Table: "detour_test_inbound", Mode: rs.Mode, Families: rs.Families, Sets: rs.Sets, Chains: rs.Chains}
	if diff := cmp.Diff(want.Lines(""), have.Lines("")); diff != "" {
		t.Fatalf("named table differs from the plan (-plan +installed):\n%s", diff)
	}
	if l := have.Lines(""); len(l) == 0 || l[0] != "add table inet detour_test_inbound" {
		t.Errorf("named table's first line = %q, want the named table", l)
	}
	if changed, err := named.ApplyRuleset(ctx, rs, have); err != nil || changed {
		t.Errorf("re-apply named table: changed %v, %v; want no change", changed, err)
	}
	listed := ns.Run(t, "nft", "list", "tables")
	if !strings.Contains(listed, "table inet detour_test_inbound") || strings.Contains(listed, "table inet detour\n") {
		t.Errorf("nft list tables:\n%s\nwant only detour_test_inbound", listed)
	}
	if o := observe(t, def); !o.Empty() || o.Foreign() {
		t.Errorf("default Driver beside the named table: empty %v, foreign %v; want empty and not foreign", o.Empty(), o.Foreign())
	}
	if _, err := def.ApplyRuleset(ctx, rs, observe(t, def)); err != nil {
		t.Fatal(err)
	}
	if o := observe(t, named); o.Foreign() || !slices.Equal(o.Lines(""), have.Lines("")) {
		t.Errorf("named Driver beside the default table: foreign %v, lines changed %v", o.Foreign(), !slices.Equal(o.Lines(""), have.Lines("")))
	}
	for range 2 {
		if err := named.RemoveTable(ctx, observe(t, named)); err != nil {
			t.Fatal(err)
		}
	}
	if got := ns.Run(t, "nft", "list", "tables"); strings.TrimSpace(got) != "table inet detour" {
		t.Errorf("after removing the named table, nft list tables = %q; want only detour's default table", got)
	}
	if err := def.RemoveTable(ctx, observe(t, def)); err != nil {
		t.Fatal(err)
	}
}
