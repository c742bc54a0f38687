// Package nftables is detour's native nftables backend: it renders a
// redirect.Capture into detour's own table, `table inet detour` (named
// interval sets for ports, CIDRs, uids and gids, so the rule count does not
// grow with the lists), applies it over netlink in one atomic batch with no
// child process and no nft binary, observes it over netlink, and removes it by
// deleting the table. docs/rules.md ("nftables backend") describes the rules
// and how "installed equals planned" is established.
//
// Render is pure. Apply, Observe and Remove need CAP_NET_ADMIN in the target
// network namespace; they open their netlink sockets in the namespace of the
// fd they are given (Options.NetNSFd), or of the calling OS thread when it is
// 0. The TPROXY policy routing and the addresses on lo are not made here: the
// orchestration in redirect makes them for every backend.
//
// This package must not import cmd/..., cni, controlplane, bpf or the
// iptables backend; it is imported only by the place that assembles the
// backends.
package nftables
