// Package inject adds detour's sidecar to pods and removes it again: the Envoy
// proxy (a native sidecar — an init container with restartPolicy Always — or a
// classic container), running as the redirect config's proxy uid, with a
// bootstrap that points at the control plane and probes on Envoy's /ready;
// the detour.io/redirect annotation and the excluded admin/ready ports for
// the CNI plugin (plus, when asked, the `detour validate` race guard), or the
// `detour install` init container in init-container mode.
//
// It is pure: a pod template in, a mutation out. The same mutation is applied
// by the admission webhook (package inject/webhook, as a JSON patch) and by
// `detour inject` to manifests offline (Manifests), and is recorded in the
// annotation sidecar.detour.io/status so that injection is idempotent and
// Uninject removes exactly what was added.
//
// A pod's detour.io/* annotations decode into redirect.Config through
// redirect.FromAnnotations over the mesh-wide base (internal/meshconfig), as
// the CNI plugin and the control plane decode them; the injector's own
// per-pod settings are the sidecar.detour.io/* annotations. A bad value is an
// error naming the annotation and the value.
//
// No privileges. It must not import client-go, go-control-plane (the
// bootstrap is rendered by a function in Options) or cmd/....
package inject
