// Package redirectbench compares the redirection backends through one relay
// proxy: no proxy at all (direct), the relay dialed directly (no redirection,
// and no SO_ORIGINAL_DST call, which every proxy behind a redirection makes:
// a floor below what any backend can reach), iptables-nft, iptables-legacy, nftables
// (nat REDIRECT) and eBPF (cgroup connect hooks), without and with socket
// acceleration, for new connections per second (through the relay to the
// server, and answered by the relay itself, which leaves the least besides
// the redirection), CPU per connection of both, request/response latency (p50, p99)
// and stream throughput: the median of interleaved repetitions, each in a
// fresh lab, and each path's median per-repetition ratio to iptables-nft. It
// prints a table; it asserts nothing about speed. With BENCH_BPF_STATS=1 the
// eBPF paths also report each program's runs and run time per connection,
// as the kernel counts them (BPF_ENABLE_STATS, on only during those
// workloads; it slows every program run, so such a run's other eBPF figures
// are not comparable with another run's).
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
