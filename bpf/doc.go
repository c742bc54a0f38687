// Package bpf is detour's eBPF backend: cgroup socket programs that redirect
// outbound TCP and DNS at connect()/sendmsg() time, answer the proxy's
// SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST (no NAT entry exists, so the kernel's
// own answer fails), and give the app the address it dialed back from
// getpeername() and recvmsg().
//
// It owns everything under its pin directory (/sys/fs/bpf/detour by default):
// the maps (maps/) and the bpf_links (links/<kind>@<cgroup id>/), and nothing
// else: other owners' programs on the same cgroups are left alone. The maps
// are rendered from redirect.Capture, never from redirect.Config.
//
// Privileges: CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN (bpffs mount, cgroup
// attach). It is the only package that imports github.com/cilium/ebpf. The C
// sources (detour.c, SPDX GPL-2.0-only OR BSD-2-Clause) compile with bpf2go;
// the generated detour_bpfel.{go,o} are committed, so building needs no clang.
// Inbound capture is not here: connect hooks never see inbound connections.
// This package must not import another backend (redirect/iptables,
// redirect/nftables), redirect/backends, cmd/... or cni.
package bpf
