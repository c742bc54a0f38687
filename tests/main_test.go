//go:build linux

package tests

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
)

// detourBin is the detour binary TestMain built for this run.
var detourBin string

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "cgroup" {
		os.Exit(cgroupHelper())
	}
	flag.Parse()
	// The scenarios mostly wait on the kernel and on child processes, not on the CPU:
	// run more namespaces at once than there are cores, unless -parallel was given.
	parallel := 8
	if v, err := strconv.Atoi(os.Getenv("DETOUR_E2E_PARALLEL")); err == nil && v > 0 {
		parallel = v
	}
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		_ = flag.Set("test.parallel", strconv.Itoa(parallel))
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "detour-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Without root every test skips (or fails under DETOUR_REQUIRE_PRIVILEGED=1)
	// before using the binary; building it anyway proves the command builds.
	// The binaries `make build` makes: the lean detour, which hands the
	// commands that need the eBPF backend to detour-ebpf next to it.
	if detourBin, err = privtest.BuildAs(dir, "github.com/detour-mesh/detour/cmd/detour", "detour", "detour_lean"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err = privtest.BuildAs(dir, "github.com/detour-mesh/detour/cmd/detour", "detour-ebpf", ""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if err := ebpfTeardown(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	return code
}
