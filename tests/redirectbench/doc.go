// Package redirectbench compares the redirection backends through one relay
// proxy: no proxy at all (direct), iptables (nat REDIRECT) and eBPF (cgroup
// connect hooks), for new connections per second, request/response latency
// (p50, p99) and stream throughput. It prints a table; it asserts nothing
// about speed. It needs root and runs in a throwaway lab (two network
// namespaces) and, for eBPF, a cgroup it creates with a private bpffs.
// Run it with `make bench-redirect`.
package redirectbench
