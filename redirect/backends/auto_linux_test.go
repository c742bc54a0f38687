package backends

import (
	"context"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// TestAutoAfterAnIPTablesNFTUninstall: iptables-nft leaves its (empty) ip
// and ip6 nat tables behind after detour's uninstall. They hold no other
// tool's rules, so the next `auto` install must take the first usable
// backend as in a fresh namespace — an iptables one — not nftables as if
// another tool's nftables tables were there (it did before: install,
// uninstall, install switched the namespace to nftables).
func TestAutoAfterAnIPTablesNFTUninstall(t *testing.T) {
	privtest.Require(t, "iptables-nft", "iptables-nft-save", "iptables-legacy", "iptables-legacy-save", "nft")
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
	if out := l.ns.Run(t, "nft", "list", "tables"); out == "" {
		t.Fatal("no ip nat table left by iptables-nft: the test sets up nothing")
	}
	res, err := e.Install(ctx, plan(redirect.BackendAuto))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Uninstall(ctx) })
	if res.Backend != fresh.Backend {
		t.Errorf("auto after an iptables-nft install and uninstall chose %s; in the fresh namespace it chose %s", res.Backend, fresh.Backend)
	}
}
