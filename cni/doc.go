// Package cni is the detour-cni chained CNI plugin (CNI 1.1: ADD, DEL, CHECK,
// STATUS, GC, VERSION).
//
// ADD reads the pod named in CNI_ARGS from the Kubernetes API (bounded retries
// and timeouts), decides whether it opted in (annotation or namespace label
// detour.io/redirect: enabled; excluded namespaces and host-network pods are
// skipped), decodes its detour.io/ annotations into a redirect.Config and
// installs that plan inside the pod's network namespace with the redirect
// engine, then prints the previous plugin's result unchanged. It fails closed:
// an unreachable API, a missing pod or an invalid annotation fails the ADD.
// Each attachment gets a small state file (see State) that CHECK, DEL and GC use.
// The plugin config is read strictly (ParseConf): a key that is neither
// detour-cni's nor the CNI specification's fails ADD, CHECK and STATUS with
// code 7 naming it; DEL and GC go on and log it.
//
// Output: stdout carries the CNI result or error and nothing else; log lines
// (JSON, log/slog) go to the config's logFile or to stderr. The plugin config
// names the log destination, so this package builds its own handler per call
// unless Options.Logger is set.
//
// Privileges: ADD, CHECK and DEL need CAP_NET_ADMIN and CAP_NET_RAW in the pod's
// network namespace (the engine enters it and runs the iptables tools there);
// nothing here changes the namespace the plugin process runs in. With backend
// ebpf they also need CAP_BPF and CAP_SYS_ADMIN on the node: the first pod
// attaches the programs to the config's ebpfCgroupRoot and pins them under
// ebpfPinDir, and each pod's namespace is enrolled by its cookie in those
// node-wide maps (recorded in the state, so DEL and GC can remove it after the
// namespace is gone). Owners are
// matched by numeric uid/gid only: the plugin never looks up user or group
// names (NSS lookups can hang a CNI call).
//
// The conflist installer lives in cni/install. This package must not import
// cmd/... or controlplane, nor bpf, redirect/backends or github.com/cilium/ebpf:
// the lean detour-cni links it, with the netfilter Drivers only
// (redirect/backends/netfilter). cmd/detour-cni gives it the eBPF backend
// through Options (Drivers, RemoveEBPFEnrolment, EBPFReady) in its whole
// build, detour-cni-ebpf, and in its lean build a HandOver that execs
// detour-cni-ebpf for the calls that need that backend (Plugin.needsEBPF).
package cni
