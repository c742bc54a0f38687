package controlplane

import (
	"math"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"testing"
	"time"
)

// TestMemoryGovernor: after a collection the limit is what the process holds
// (live heap, stacks, runtime) plus the headroom; Stop restores the limit
// found. Not parallel: the memory limit is the process's.
func TestMemoryGovernor(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "") // the governor steps aside when it is set
	before := debug.SetMemoryLimit(-1)
	g := startMemoryGovernor(nil)
	keep := make([][]byte, 0, 64)
	for range 64 {
		keep = append(keep, make([]byte, 1<<20)) // 64 MiB live
	}
	// The governor updates from a cleanup the collector queues; on a loaded
	// machine it may not have run by the end of the next collection. Wait
	// (at most 5 s) for the limit to follow the 64 MiB, then read.
	samples := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/total:bytes"}}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		runtime.GC()
		runtime.GC()
		rtmetrics.Read(samples)
		if live := samples[0].Value.Uint64(); g.Limit() >= int64(live+live/4) || time.Now().After(deadline) {
			break
		}
	}
	live, total := samples[0].Value.Uint64(), samples[1].Value.Uint64()
	limit := g.Limit()
	if got := debug.SetMemoryLimit(-1); got != limit {
		t.Errorf("the runtime's limit is %d, the governor's %d", got, limit)
	}
	// Headroom: a quarter of the live heap (16 MiB here), over what the
	// process holds; total memory includes free heap pages, so it bounds
	// the limit loosely from above.
	if lo := int64(live + live/4); limit < lo || limit > int64(total)+int64(live/4)+memoryHeadroomFloor {
		t.Errorf("limit %d MiB with %d MiB live and %d MiB held, want at least %d MiB and about the held memory plus a quarter of the live heap",
			limit>>20, live>>20, total>>20, lo>>20)
	}
	runtime.KeepAlive(keep)
	g.Stop()
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("after Stop the limit is %d, want %d as before", got, before)
	}
	if before != math.MaxInt64 {
		t.Logf("the test ran with a memory limit of %d", before)
	}

	t.Setenv("GOMEMLIMIT", "1GiB")
	g = startMemoryGovernor(nil)
	defer g.Stop()
	if g.Limit() != 0 || debug.SetMemoryLimit(-1) != before {
		t.Errorf("with GOMEMLIMIT set the governor set a limit (%d)", g.Limit())
	}
}
