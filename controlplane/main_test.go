package controlplane

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// BenchmarkFanOut starts the test binary again as its client fleet.
	if os.Getenv(fleetEnv) != "" {
		os.Exit(runFleet())
	}
	os.Exit(m.Run())
}
