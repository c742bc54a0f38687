//go:build linux

package controlplane

import (
	"bufio"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// resetPeakRSS returns free memory to the operating system and resets the
// process's peak resident set size (VmHWM), so the next readRSS reports the
// peak of what follows: the figure the operating system (and an OOM killer)
// sees, garbage and runtime overhead included.
func resetPeakRSS() {
	debug.FreeOSMemory()
	// "5" resets the peak RSS (Linux 4.0 and later).
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// readRSS returns the peak (VmHWM) and current (VmRSS) resident set size in
// bytes; 0 when /proc cannot be read.
func readRSS() (peak, current uint64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmHWM" && k != "VmRSS") {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			continue
		}
		if k == "VmHWM" {
			peak = kb << 10
		} else {
			current = kb << 10
		}
	}
	return peak, current
}
