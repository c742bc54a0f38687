// Package kubeapi is a minimal client of the Kubernetes API for the install
// path: it reads a kubeconfig (server, CA, bearer token or token file, client
// certificate) and GETs or POSTs single objects as JSON over HTTPS with
// net/http, decoding only the fields its callers name.
//
// It exists so that detour-cni and `detour cni install` start in milliseconds:
// client-go's scheme and API types cost tens of milliseconds and tens of MiB at
// every start, and a CNI ADD reads one pod and maybe one namespace.
//
// A token file is read again on every request, so a token rewritten on disk
// (rotation, or a new installer pod taking over) is used by the next request
// without reloading anything.
//
// It needs no privileges beyond reading the kubeconfig and the files it names.
// It must not import k8s.io/client-go, k8s.io/api, k8s.io/apimachinery or
// anything under cmd/.
package kubeapi
