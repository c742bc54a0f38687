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
package main
