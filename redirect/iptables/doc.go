// Package iptables is detour's iptables backend: two redirect.Drivers,
// iptables-legacy and iptables-nft, that render a redirect.Capture as
// iptables rules (Rules; docs/rules.md describes every rule), observe them
// with iptables-save and apply them with one iptables-restore --noflush per
// family that differs. iptables-restore commits table by table, so a family
// whose restore fails is read again and put back to what it was, with the
// families before it. Everything installed is owned by name: chains start
// with DETOUR_ and every rule in a built-in chain carries the ownership
// comment, so Remove deletes exactly that.
//
// The binaries of the host are found on PATH at call time and need
// CAP_NET_ADMIN and CAP_NET_RAW in the namespace redirect.Engine entered.
//
// This package imports redirect and internal/nlmsg and nothing of detour's
// beyond them; it must not import cmd/..., cni, controlplane, bpf or another
// backend.
package iptables
