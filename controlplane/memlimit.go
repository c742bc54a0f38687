package controlplane

import (
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
)

// memoryGovernor (started by Run with AdaptiveMemoryLimit) keeps the Go runtime's soft memory limit
// (debug.SetMemoryLimit) a little above what the process needs: after every
// garbage collection it sets the limit to the live heap plus a quarter (at
// least memoryHeadroomFloor), plus the goroutine stacks, the unused part of
// the heap's spans and the runtime's own memory.
//
// Why: the control plane's memory is mostly per proxy — four goroutine stacks
// and about 20 KiB of heap per ADS connection — and GOGC=100 lets the heap
// grow by the live heap plus the stacks before collecting, about doubling the
// peak. A fixed GOMEMLIMIT has to be chosen per fleet size, and below what the
// fleet needs the collector runs nearly continuously; this limit follows the
// need. GOGC still applies below it (a small heap is collected as usual).
//
// The limit is a soft one: the runtime may exceed it rather than spend more
// than about half the CPU collecting. A GOMEMLIMIT set in the environment
// wins: the governor then does nothing.
type memoryGovernor struct {
	log *slog.Logger

	mu      sync.Mutex
	stopped bool
	limit   int64 // the last limit set
	prev    int64 // the limit before Start
}

// memoryHeadroomFloor is the least headroom the governor leaves above what
// the process needs; memoryHeadroomFraction the headroom as a part of the
// live heap, when larger. Measured with make bench-controlplane: see
// docs/control-plane.md, Memory.
const (
	memoryHeadroomFloor    = 16 << 20
	memoryHeadroomFraction = 0.25
)

// startMemoryGovernor starts following the process's memory; log (nil
// discards) notes when GOMEMLIMIT is set and the governor steps aside. Stop
// ends it and restores the previous limit.
func startMemoryGovernor(log *slog.Logger) *memoryGovernor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &memoryGovernor{log: log}
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		log.Info("GOMEMLIMIT is set: the memory limit is not adjusted", "gomemlimit", v)
		g.stopped = true
		return g
	}
	g.prev = debug.SetMemoryLimit(-1)
	g.update()
	g.arm()
	return g
}

// arm runs update after the next garbage collection, and again after each
// one until Stop: a cleanup of an object nothing refers to runs once the
// collector has found it unreachable.
func (g *memoryGovernor) arm() {
	sentinel := new([4]uintptr) // larger than 16 bytes: not batched with other tiny objects
	runtime.AddCleanup(sentinel, func(g *memoryGovernor) {
		if g.update() {
			g.arm()
		}
	}, g)
}

// memoryMetrics are the runtime metrics update reads.
var memoryMetrics = []string{
	"/gc/heap/live:bytes",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/released:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
}

// update sets the limit from the live heap of the last collection; it
// reports false once stopped.
func (g *memoryGovernor) update() bool {
	samples := make([]rtmetrics.Sample, len(memoryMetrics))
	for i, name := range memoryMetrics {
		samples[i].Name = name
	}
	rtmetrics.Read(samples)
	v := func(i int) uint64 { return samples[i].Value.Uint64() }
	live := v(0)
	// What the process holds besides heap objects and free heap pages
	// (which the runtime returns to the system as it nears the limit):
	// goroutine stacks, the unused part of heap spans, the runtime's
	// metadata and other memory. Leaving the unused part out would let it
	// eat the headroom, and the collector would run again at once.
	var rest uint64
	if total, held := v(1), v(2)+v(3)+v(5); total > held {
		rest = total - held
	}
	headroom := max(uint64(memoryHeadroomFloor), uint64(float64(live)*memoryHeadroomFraction))
	limit := int64(min(live+headroom+rest, math.MaxInt64/2))

	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return false
	}
	g.limit = limit
	debug.SetMemoryLimit(limit)
	return true
}

// Limit is the limit last set (0 when the governor stepped aside).
func (g *memoryGovernor) Limit() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.limit
}

// Stop ends the governor and restores the limit it found.
func (g *memoryGovernor) Stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	g.stopped = true
	debug.SetMemoryLimit(g.prev)
}
