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
// Privileges: write access to the CNI bin and conf directories (in a DaemonSet,
// hostPath mounts) and read access to the service account files. No network
// access and no capabilities beyond file permissions.
//
// This package must not import cmd/..., controlplane or bpf.
package install
