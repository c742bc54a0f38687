// Package redirectbench compares the redirection backends through one relay
// proxy: no proxy at all (direct), the relay dialed directly (no redirection:
// the floor any backend can reach), iptables-nft, iptables-legacy, nftables
// (nat REDIRECT) and eBPF (cgroup connect hooks), without and with socket
// acceleration, for new connections per second (through the relay to the
// server, and answered by the relay itself, which leaves the least besides
// the redirection), CPU per connection, request/response latency (p50, p99)
// and stream throughput: the median of interleaved repetitions, each in a
// fresh lab, and each path's median per-repetition ratio to iptables-nft. It
// prints a table; it asserts nothing about speed.
//
// The app and the relay are processes of their own (the test binary
// re-executed with `ip netns exec POD setpriv --reuid …`), as a workload and
// its sidecar are; the echo server runs in the benchmark's process, in the
// remote namespace. Every backend is installed through the same Engine as
// `detour install`, with the same config (inbound capture only with
// BENCH_INBOUND=1).
//
// It needs root and runs in throwaway labs (two network namespaces each) and,
// for eBPF, a cgroup it creates with a private bpffs.
// Run it with `make bench-redirect`.
package redirectbench
