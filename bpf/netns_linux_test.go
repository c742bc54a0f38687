package bpf

import "github.com/detour-mesh/detour/internal/netns"

func doNS(path string, fn func() error) error { return netns.Do(path, fn) }
