//go:build tools

// Package tools pins etcd, the store behind the tests' real API server. It is
// its own module so the main module never depends on etcd.
package tools

import _ "go.etcd.io/etcd/server/v3"
