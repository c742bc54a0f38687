//go:build tools

// Package tools pins kube-apiserver, which the tests run as a real API server.
// It is its own module so the main module never depends on k8s.io/kubernetes.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
