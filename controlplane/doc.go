// Package controlplane serves Envoy sidecars the listeners and clusters that
// match the redirection detour installs.
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
// not pushed and replicas agree. It serves them over ADS (SotW and delta) with
// go-control-plane's server and a cache of its own (cache.go) that answers
// from resources encoded once per change, holds NACKed configs back instead
// of resending them in a loop, enforces the mTLS node identity, and exposes
// health, readiness, Prometheus metrics and /debug/nodes over HTTP.
//
// Privileges: none. The package listens on the addresses it is given.
//
// Only this package (and its subpackages) imports go-control-plane, gRPC,
// Prometheus and client-go. It must not import cmd/..., cni or bpf.
package controlplane
