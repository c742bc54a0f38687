// Package install puts the detour-cni plugin in place on a Kubernetes node and
// keeps it there: it copies the plugin binary into the CNI bin directory, appends
// detour-cni as the last plugin of the primary network configuration (the
// lexically first .conf, .conflist or .json file of the CNI conf directory, the
// only one containerd reads), writes the kubeconfig the plugin uses from the
// service account's token and CA, and watches all three so that a primary CNI
// that rewrites its file, a deleted binary or a rotated token is repaired within
// one poll interval.
//
// The conflist transforms (Insert, Remove, ConfToList) are pure functions over
// bytes; Installer does the host work. Every file it writes is written to a
// temporary file in the same directory and renamed into place, so a container
// runtime never reads a half-written configuration. Everything it writes is
// found again by ownership — the plugin entry whose type is detour-cni, the
// binary named detour-cni, the kubeconfig at its configured path — and Remove and
// Uninstall take away exactly that. Every step is safe to repeat.
//
// With Options.PluginServiceAccount the plugin gets an identity of its own: the
// installer requests a token of that service account (TokenRequest, bound to
// the node), writes it next to the kubeconfig, which names it as tokenFile, and
// renews it at half its life; with Options.DaemonSet a SIGTERM uninstalls only
// when the DaemonSet is gone, so a replaced installer pod hands the node over
// without a gap. Ready says whether a pod created now goes through the plugin.
//
// Privileges: write access to the CNI bin and conf directories (in a DaemonSet,
// hostPath mounts) and read access to the service account files. Network
// access to the API server only for the plugin token and the DaemonSet check
// (internal/kubeapi). No capabilities beyond file permissions.
//
// This package must not import cmd/..., controlplane or bpf, nor client-go or
// the Kubernetes API types (it is part of the lean install path).
package install
