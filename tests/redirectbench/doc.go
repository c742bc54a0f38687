// Package redirectbench compares the redirection backends through one relay
// proxy: no proxy at all (direct), the relay dialed directly (no redirection,
// and no SO_ORIGINAL_DST call, which every proxy behind a redirection makes:
// a floor below what any backend can reach), the same with the relay asking
// SO_ORIGINAL_DST all the same (told there is none: the floor of any
// redirection whose proxy asks), iptables-nft, iptables-legacy, nftables
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
// The app, the relay and the echo server are processes of their own (the
// test binary re-executed with `ip netns exec NS setpriv --reuid …`), as a
// workload, its sidecar and a remote host are; the echo server is moved out
// of the bench's cgroup before it listens, so it runs none of the pod's eBPF
// programs. The relay and the server are epoll loops on OS threads of their own
// (two each, as Envoy's workers on two cores), the client's new connections
// too, its latency and stream workloads blocking sockets: a Go relay with a
// goroutine per connection cost the bench more fixed CPU per connection than
// the redirection it measures. The relay still reads SO_ORIGINAL_DST on every
// redirected connection, dials it and relays both ways (loop_linux_test.go).
// BENCH_TOOLS=goroutines runs the earlier tools (goroutine per connection,
// the echo server in the bench's process and cgroup), which the figures
// before 2026-12-05 15:00 UTC were made with. Every backend is installed
// through the same Engine as `detour install`, with the same config (inbound
// capture only with BENCH_INBOUND=1).
//
// Besides the rates, it prints where each connection's CPU went (client,
// relay, server; the kernel's work in their context included) and their
// context switches per connection.
//
// It needs root and runs in throwaway labs (two network namespaces each) and,
// for eBPF, a cgroup it creates with a private bpffs.
// Run it with `make bench-redirect`.
package redirectbench
