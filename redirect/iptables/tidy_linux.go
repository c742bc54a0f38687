package iptables

import (
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/nlmsg"
	"github.com/detour-mesh/detour/redirect"
)

// iptables-nft makes a table (`table ip nat`, `table ip6 mangle`, …) and a
// built-in chain as a base chain when the first rule goes in, and never
// deletes them: iptables-restore has no command for either. Left behind after
// detour's rules are gone, the empty base chains still hook every packet of
// the namespace into netfilter (conntrack and NAT run for each new connection)
// and the namespace no longer lists what it did before the install. So when a
// transaction has taken the last of detour's hooks out of a built-in chain,
// that chain is deleted, and then its table when no chain is left in it, over
// netlink with no child process. Each deletion is a transaction of its own
// whose message carries NLM_F_NONREC: the kernel refuses (EBUSY) to delete a
// chain that holds a rule or a table that holds a chain or a set, so a chain
// or table another tool has a rule, chain or set in, also one it added since
// it was observed, is kept as it is.

// emptiedChains returns, by table, the built-in chains that held our hooks in
// from and hold none in to, with tables the family's tables as observed
// before the transaction. A chain whose policy is not ACCEPT is left out: it
// changes packets without a rule, and is not detour's to remove.
func emptiedChains(from, to owned, tables []*saveTable) map[string][]string {
	out := map[string][]string{}
	for _, t := range tables {
		had, ok := from[t.name]
		if !ok {
			continue
		}
		for _, c := range t.chains {
			if c.policy != "ACCEPT" || !hooks(had, c.name) || hooks(to[t.name], c.name) {
				continue
			}
			out[t.name] = append(out[t.name], c.name)
		}
	}
	return out
}

// hooks reports whether t has a hook of ours in the built-in chain.
func hooks(t *ownedTable, chain string) bool {
	return t != nil && slices.ContainsFunc(t.Hooks, func(r Rule) bool { return r.Chain == chain })
}

// deleteEmptied deletes each chain of chains (by table) that holds nothing,
// then each of those tables that holds nothing, in the calling thread's
// network namespace (the one Engine entered). It returns what it deleted.
func deleteEmptied(f redirect.Family, chains map[string][]string) (deleted []string, err error) {
	family := byte(unix.NFPROTO_IPV4)
	if f == redirect.IPv6 {
		family = unix.NFPROTO_IPV6
	}
	c, err := nlmsg.Open(unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open nfnetlink socket: %w", err)
	}
	defer c.Close()
	// kept: the kernel refused, or it is gone already.
	kept := func(err error) bool { return errors.Is(err, unix.EBUSY) || errors.Is(err, unix.ENOENT) }
	for _, table := range tableOrder {
		names, ok := chains[table]
		if !ok {
			continue
		}
		for _, name := range names {
			err := deleteEmpty(c, unix.NFT_MSG_DELCHAIN, family, nlmsg.Attrs(nil).String(unix.NFTA_CHAIN_TABLE, table).String(unix.NFTA_CHAIN_NAME, name))
			if kept(err) {
				continue
			}
			if err != nil {
				return deleted, fmt.Errorf("delete chain %s %s: %w", table, name, err)
			}
			deleted = append(deleted, table+" "+name)
		}
		err := deleteEmpty(c, unix.NFT_MSG_DELTABLE, family, nlmsg.Attrs(nil).String(unix.NFTA_TABLE_NAME, table))
		if kept(err) {
			continue
		}
		if err != nil {
			return deleted, fmt.Errorf("delete table %s: %w", table, err)
		}
		deleted = append(deleted, table)
	}
	return deleted, nil
}

// deleteEmpty runs one nftables transaction of one deletion (msg) that the
// kernel makes only when what it deletes is empty (NLM_F_NONREC).
func deleteEmpty(c *nlmsg.Conn, msg uint16, family byte, attrs nlmsg.Attrs) error {
	body := append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...)
	return c.Transact(unix.NFNL_SUBSYS_NFTABLES<<8|msg, unix.NLM_F_NONREC, body)
}
