//go:build linux

package cpe2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// detourBin is the detour binary TestMain built for this run.
var detourBin string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "detour-cp-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	detourBin = filepath.Join(dir, "detour")
	cmd := exec.Command("go", "build", "-o", detourBin, "github.com/detour-mesh/detour/cmd/detour")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build detour:", err)
		return 1
	}
	return m.Run()
}
