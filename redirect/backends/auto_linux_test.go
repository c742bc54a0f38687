package backends

import (
	"context"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// TestAutoAfterAnIPTablesNFTUninstall: iptables-nft leaves empty ip and ip6
// nat tables behind when the last rule goes (detour's uninstall before it
// deleted them, and any other tool's last rule still does). They hold no
// other tool's rules, so the next `auto` install must take the first usable
// backend as in a fresh namespace — an iptables one — not nftables as if
// another tool's nftables tables were there (it did before: install,
// uninstall, install switched the namespace to nftables).
func TestAutoAfterAnIPTablesNFTUninstall(t *testing.T) {
	privtest.Require(t, "iptables-nft", "ip6tables-nft", "iptables-nft-save", "iptables-legacy", "iptables-legacy-save", "nft")
	l := newEBPFLab(t)
	ctx := context.Background()
	e := l.engine("")
	plan := func(b redirect.Backend) redirect.Plan { return dualPlan(t, b, true) }
	fresh, err := e.Install(ctx, plan(redirect.BackendAuto))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Install(ctx, plan(redirect.BackendIPTablesNFT)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if out := l.ns.Run(t, "nft", "list", "tables"); out != "" {
		t.Fatalf("detour's iptables-nft uninstall left tables:\n%s", out)
	}
	// What iptables-nft leaves once another tool's last rule is gone.
	for _, tool := range []string{"iptables-nft", "ip6tables-nft"} {
		l.ns.Run(t, tool, "-t", "nat", "-A", "OUTPUT", "-j", "RETURN")
		l.ns.Run(t, tool, "-t", "nat", "-D", "OUTPUT", "-j", "RETURN")
	}
	if out := l.ns.Run(t, "nft", "list", "tables"); out != "table ip nat\ntable ip6 nat\n" {
		t.Fatalf("iptables-nft left other tables than empty nat ones:\n%s", out)
	}
	res, err := e.Install(ctx, plan(redirect.BackendAuto))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Uninstall(ctx) })
	if res.Backend != fresh.Backend {
		t.Errorf("auto beside iptables-nft's empty nat tables chose %s; in the fresh namespace it chose %s", res.Backend, fresh.Backend)
	}
}
