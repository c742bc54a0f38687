// Package webhook serves the sidecar injector (package inject) as a Kubernetes
// mutating admission webhook, over HTTPS, from the control-plane process: the
// AdmissionReview handler, the serving certificate (self-generated and
// rotated, or read from files such as a mounted cert-manager Secret), and the
// MutatingWebhookConfiguration it owns (created, updated, and its caBundle
// patched on rotation).
//
// Privileges: get, create, update of its one MutatingWebhookConfiguration;
// the server's /version. It reads no pods or namespaces: the configuration's
// namespace selectors and match conditions route requests to a path that
// already says why the pod is asked about, so an admission needs no API call.
//
// With controlplane/kube, it is the only package that imports client-go
// (for its own MutatingWebhookConfiguration); commands hand it a kubeconfig
// path, not a client. It must not import cmd/..., cni or bpf.
package webhook
