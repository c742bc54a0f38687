// Command detour-cni is the detour chained CNI plugin: it installs a pod's
// traffic redirection inside the pod's network namespace. The container runtime
// runs it with the CNI_* environment and the plugin config on stdin; the result
// (or the error) goes to stdout, logs to the config's logFile or stderr. See
// docs/cni.md.
package main
