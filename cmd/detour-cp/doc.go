// Command detour-cp is detour's control-plane binary: `detour-cp control-plane`
// serves Envoy sidecars their listeners and clusters over ADS (from a mesh file
// or the Kubernetes API) and `detour-cp bootstrap` prints an Envoy bootstrap.
//
// It holds everything heavy (go-control-plane, the Envoy protos, gRPC, the
// Kubernetes client) so that the install path, cmd/detour and cmd/detour-cni,
// starts in milliseconds without any of it. `detour control-plane …` and
// `detour bootstrap …` exec this binary with the same arguments.
//
// It needs no privileges: the control plane binds its listen addresses (below
// 1024 needs CAP_NET_BIND_SERVICE) and reads the Kubernetes API with the
// permissions of its kubeconfig or service account. The main is thin: cobra
// commands bind flags to option structs and call plain run functions that
// tests call directly.
package main
