//go:build linux

package cpe2e

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
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
	if detourBin, err = privtest.Build(dir, "github.com/detour-mesh/detour/cmd/detour"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// `detour control-plane` execs the detour-cp next to detour: the tests
	// run the documented command through that hand-over.
	if _, err := privtest.Build(dir, "github.com/detour-mesh/detour/cmd/detour-cp"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
