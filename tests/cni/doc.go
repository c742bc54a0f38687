// Package cni holds the end-to-end tests of the detour-cni plugin: the reference
// bridge, host-local and loopback plugins plus a freshly built detour-cni, driven
// by libcni against real network namespaces, with pods read from a real
// kube-apiserver and etcd (controller-runtime's envtest). The whole test binary
// runs inside a network namespace it creates, so the bridge and its veths never
// appear in the root namespace.
//
// Needs root, the reference plugins ($DETOUR_CNI_PLUGINS_BIN, make
// deps-cni-plugins) and kube-apiserver + etcd ($KUBEBUILDER_ASSETS, make
// deps-kube); without them the tests skip, or fail under
// DETOUR_REQUIRE_PRIVILEGED=1.
package cni
