//go:build !linux

package controlplane

// resetPeakRSS is not supported on this system.
func resetPeakRSS() {}

// readRSS is not measured on this system.
func readRSS() (peak, current uint64) { return 0, 0 }
