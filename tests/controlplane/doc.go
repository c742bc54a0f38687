// Package cpe2e is the control plane's end-to-end test: `detour control-plane`
// serving a mesh file, `detour install` capturing a workload's traffic in a
// throwaway network namespace (internal/lab), and a small test proxy that
// follows the listeners the control plane serves — it binds what binds, hands
// connections to the bind_to_port: false listener that matches their original
// destination, and forwards to the chosen cluster's endpoint or to the original
// destination. The test proxy is test code, not a product: it stands in for
// Envoy, which cannot run on these machines.
//
// The tests need root (network namespaces, iptables) and skip without it, or
// fail under DETOUR_REQUIRE_PRIVILEGED=1. They change nothing outside the
// namespaces they create; the control plane listens on loopback.
package cpe2e
