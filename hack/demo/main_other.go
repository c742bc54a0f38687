//go:build !linux

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "demo: detour's demo needs Linux (network namespaces)")
	os.Exit(1)
}
