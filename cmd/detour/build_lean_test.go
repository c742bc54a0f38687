//go:build detour_lean

package main

// leanBuild: the tests run in the lean build (bin/detour), which hands every
// eBPF command to detour-ebpf instead of serving it.
const leanBuild = true
