// Package netfilter assembles detour's netfilter Drivers — both iptables
// backends and nftables — in `backend auto`'s order of preference, without
// the eBPF backend. redirect/backends appends the eBPF Driver to these; the
// lean `detour` binary (built with -tags detour_lean, docs/startup.md) uses
// them alone, so that it does not link github.com/cilium/ebpf, whose package
// initialization and page faults cost every start of a binary that links it.
//
// It must not import bpf or github.com/cilium/ebpf (internal/layering checks it).
package netfilter
