// Package deploy tests what deploy/ ships: every Kubernetes manifest is applied
// to a real kube-apiserver (envtest with the cached binaries, see
// ENVIRONMENT.md), the RBAC is exercised by impersonating the service accounts,
// the CNI installer's kubeconfig is used against the same API server, and the
// Dockerfile's paths and static build are checked. There is no Docker engine on
// the project's machines, so the image itself is not built here.
package deploy
