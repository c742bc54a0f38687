//go:build !linux

package cni

// cgroup2File: no cgroup v2 outside Linux.
func cgroup2File() string { return "" }
