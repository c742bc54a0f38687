// Command detour-cni is the detour chained CNI plugin: it installs a pod's
// traffic redirection inside the pod's network namespace. The container runtime
// runs it with the CNI_* environment and the plugin config on stdin; the result
// (or the error) goes to stdout, logs to the config's logFile or stderr. See
// docs/cni.md.
//
// It takes no arguments (exit 2 when given some); the CNI node installer
// (`detour cni install`) is served by detour-cp.
//
// It runs once per pod attachment, so it must start in milliseconds: it must not
// link k8s.io/client-go, k8s.io/api, k8s.io/apimachinery,
// github.com/envoyproxy/..., google.golang.org/grpc, controlplane, the node
// installer (cni/install), cobra or fsnotify (internal/layering checks it);
// pods are read with internal/kubeapi.
//
// `make build` builds it twice, as cmd/detour is: bin/detour-cni with -tags
// detour_lean (ebpf_lean.go), which must not link bpf or github.com/cilium/ebpf
// (their package initialization costs every ADD page faults), and
// bin/detour-cni-ebpf without the tag (ebpf_builtin.go), the plugin with every
// backend. The lean plugin execs detour-cni-ebpf (next to it, else in
// CNI_PATH) for a call that needs the eBPF backend, with the same CNI_*
// environment and the plugin config back on stdin: the plugin config's
// backend is ebpf, a pod's annotation asks for it, an attachment is enrolled,
// or the backend's maps are pinned on the node. A build without the tag (`go
// build ./cmd/detour-cni`) is the whole plugin and hands nothing over.
package main
