//go:build !detour_lean

package main

// leanBuild: the tests run in the full build (detour-ebpf), which serves the
// eBPF backend itself.
const leanBuild = false
