// Command detour installs a workload's traffic redirection into its sidecar
// proxy and serves the proxy its listeners. See README.md for the commands, their
// flags and exit codes (exit.go holds the codes).
//
// The main is thin: cobra commands bind flags to option structs and call plain
// run functions that tests call directly. install, uninstall, check, status and
// validate need CAP_NET_ADMIN and CAP_NET_RAW in the target namespace (and
// CAP_SYS_ADMIN to enter one with --netns); validate run as root also needs
// CAP_SETUID and CAP_SETGID to dial as a captured user; plan needs nothing.
//
// detour is the install path and must start in milliseconds: it must not link
// k8s.io/client-go, k8s.io/api, k8s.io/apimachinery, github.com/envoyproxy/...,
// google.golang.org/grpc or controlplane (internal/layering checks it). The
// commands that need them live in cmd/detour-cp; control-plane, bootstrap,
// inject and the CNI node installer (`detour cni …`, whose plugin-token
// request links net/http and crypto/tls) exec it (delegate.go).
package main
