// Package controlplane turns a mesh into the listeners and clusters Envoy
// sidecars must have to match the redirection detour installs, and runs the
// control plane that serves them (Run).
//
// A Mesh (from a mesh file, DecodeMesh, or from the Kubernetes source in
// controlplane/kube) lists services, workloads and the outbound policy. Each
// workload's transparentProxy is a redirect.Config — the same one `detour
// install` applies — so the ports and captured destinations of the served
// listeners are exactly those of the installed rules (capture.go).
//
// Server turns a mesh into one snapshot per node (Envoy node.id): generation is
// pure and deterministic, every resource is validated deeply (each typed config
// unpacked and ValidateAll'ed, plus cross-resource checks of our own) before
// anything is served, and versions are content hashes, so an unchanged node is
// not pushed and replicas agree. Serving — ADS (SotW and delta), the cache,
// NACK back-off, the mTLS node identity, health, readiness, Prometheus
// metrics and /debug/nodes — is package controlplane/xds, which Server
// embeds. This package also loads the TLS files (tls.go) and writes Envoy
// bootstraps (bootstrap.go).
//
// Privileges: none. The package listens on the addresses it is given. Run
// sets the Go runtime's soft memory limit while it runs (memlimit.go): by
// default from the memory limit of the process's cgroup, read from
// /proc/self/cgroup and /sys/fs/cgroup.
//
// Only this package and its subpackages import go-control-plane, gRPC,
// Prometheus and client-go. It must not import cmd/..., cni or bpf.
package controlplane
