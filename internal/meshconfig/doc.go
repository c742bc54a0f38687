// Package meshconfig reads detour's mesh-wide configuration: one YAML document
// (the key config.yaml of the ConfigMap detour-system/detour-config) holding
// the redirect defaults every pod starts from (a preset and a redirect.Config
// document) and the sidecar injector's settings. The CNI plugin, the injector
// and the control plane all read it, so the rules installed in a pod, the
// sidecar injected into it and the listeners served to it cannot disagree.
//
// It is pure: it parses bytes (or one file) and validates them. It needs no
// privileges and must not import client-go, go-control-plane or cilium/ebpf:
// the lean binaries (detour, detour-cni) link it.
package meshconfig
