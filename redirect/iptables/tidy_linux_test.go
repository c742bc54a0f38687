package iptables

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/netns"
	"github.com/detour-mesh/detour/internal/nlmsg"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// ruleset is `nft list ruleset` of the namespace: iptables-nft's tables are
// nftables tables, so this is everything of either.
func ruleset(t *testing.T, ns privtest.NS) string {
	t.Helper()
	return ns.Run(t, "nft", "list", "ruleset")
}

// TestUninstallLeavesNoTables: iptables-nft makes the nat, mangle and raw
// tables (with base chains that send every packet through netfilter) when
// detour's first rule goes in; uninstall, and an install that no longer needs
// one of them, delete those that hold nothing else, so the namespace lists
// what it did before. Tables holding other tools' rules stay as they were.
func TestUninstallLeavesNoTables(t *testing.T) {
	privtest.Require(t, append(backendTools, "nft")...)
	t.Parallel()
	b := redirect.BackendIPTablesNFT
	everything := cfgWith(t, "", "dns.capture=all", "mode=tproxy")

	t.Run("empty namespace", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		if got := ruleset(t, ns); got != "" {
			t.Fatalf("a fresh namespace lists:\n%s", got)
		}
		mustInstall(t, e, mustPlan(t, withBackend(t, everything, b), dualStack))
		tables := ns.Run(t, "nft", "list", "tables")
		for _, want := range []string{"table ip nat", "table ip mangle", "table ip raw", "table ip6 nat", "table ip6 mangle", "table ip6 raw"} {
			if !strings.Contains(tables, want+"\n") {
				t.Errorf("after install, no %s:\n%s", want, tables)
			}
		}
		// REDIRECT without DNS needs nat only: mangle and raw go.
		mustInstall(t, e, mustPlan(t, withBackend(t, redirect.Default(), b), dualStack))
		if got, want := ns.Run(t, "nft", "list", "tables"), "table ip nat\ntable ip6 nat\n"; got != want {
			t.Errorf("after installing REDIRECT without DNS the tables are:\n%s\nwant:\n%s", got, want)
		}
		mustUninstall(t, e)
		if got := ruleset(t, ns); got != "" {
			t.Errorf("after uninstall the namespace lists:\n%s\nwant nothing, as before the install", got)
		}
	})

	t.Run("tables of other tools", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		seedForeign(t, ns, b)
		before := ruleset(t, ns)
		mustInstall(t, e, mustPlan(t, withBackend(t, everything, b), dualStack))
		mustUninstall(t, e)
		if after := ruleset(t, ns); after != before {
			t.Errorf("uninstall changed other tools' tables:\n--- before\n%s\n--- after\n%s", before, after)
		}
	})

	// Between observing a table and deleting it another tool may put a rule
	// in it: the kernel refuses to delete a chain holding a rule, and the
	// whole transaction with it.
	t.Run("a rule that came since", func(t *testing.T) {
		t.Parallel()
		ns, _ := newNS(t)
		restoreText(t, ns, b, redirect.IPv4, "*nat\n-A OUTPUT -d 192.0.2.1/32 -j RETURN\nCOMMIT\n")
		before := ruleset(t, ns)
		var deleted []string
		err := netns.Do(ns.Path, func() (err error) {
			deleted, err = deleteEmptied(redirect.IPv4, map[string][]string{"nat": {"OUTPUT"}})
			return err
		})
		if err != nil || len(deleted) > 0 {
			t.Errorf("deleting a chain with a rule in it: deleted %q, error %v; want nothing deleted", deleted, err)
		}
		err = netns.Do(ns.Path, func() error {
			c, err := nlmsg.Open(unix.NETLINK_NETFILTER)
			if err != nil {
				return err
			}
			defer c.Close()
			return deleteEmpty(c, unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV4, nlmsg.Attrs(nil).String(unix.NFTA_TABLE_NAME, "nat"))
		})
		if !errors.Is(err, unix.EBUSY) {
			t.Errorf("deleting the table with a chain in it: %v, want EBUSY", err)
		}
		if after := ruleset(t, ns); after != before || !strings.Contains(after, "192.0.2.1") {
			t.Errorf("the refused transaction changed the table:\n--- before\n%s\n--- after\n%s", before, after)
		}
	})
}
