// Package kube is the control plane's Kubernetes source: it builds a
// controlplane.Mesh from Services, EndpointSlices, Pods and Namespaces through
// client-go informers, and rebuilds it when they change.
//
// Pods opt in exactly as the CNI plugin decides: the annotation
// detour.io/redirect (enabled or disabled), else the same label on their
// namespace; their redirect config is redirect.FromAnnotations over the base
// config, the one the plugin installs from. So the listeners a pod's proxy is
// served match the rules installed in the pod.
//
// Privileges: list and watch of services, endpointslices (discovery.k8s.io),
// pods and namespaces; nothing is written, so replicas need no election.
//
// Only this package imports client-go among the control plane's packages. It
// must not import cmd/..., cni or bpf.
package kube
