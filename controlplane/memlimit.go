package controlplane

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
)

// MemoryLimit is how Run sets the Go runtime's soft memory limit
// (debug.SetMemoryLimit) while it runs. GOMEMLIMIT in the environment wins
// over every mode.
type MemoryLimit string

const (
	// MemoryLimitAuto (the default): when the process's cgroup has a memory
	// limit (a container's), the soft limit is cgroupMemoryFraction of it, so
	// the collector works harder near the container's limit instead of the
	// process being killed there. Without a cgroup limit nothing is set. It
	// costs nothing until the heap nears the limit.
	MemoryLimitAuto MemoryLimit = "auto"
	// MemoryLimitAdaptive keeps the limit a little above what the process
	// needs (memoryGovernor): a lower peak, more CPU per change.
	MemoryLimitAdaptive MemoryLimit = "adaptive"
	// MemoryLimitOff leaves the runtime's limit as it is.
	MemoryLimitOff MemoryLimit = "off"
)

// Validate accepts "" (auto) and the modes.
func (m MemoryLimit) Validate() error {
	switch m {
	case "", MemoryLimitAuto, MemoryLimitAdaptive, MemoryLimitOff:
		return nil
	}
	return fmt.Errorf("memory limit %q is not one of auto, adaptive, off", string(m))
}

// cgroupMemoryFraction is the part of the cgroup's memory limit that
// MemoryLimitAuto makes the soft limit: the rest is for what the runtime
// does not count (the binary's text, other processes of the container) and
// for the collector to catch up.
const cgroupMemoryFraction = 0.9

// applyMemoryLimit sets the soft limit for mode and returns what restores
// the one it found. cgroupRoot is where the cgroup file system is mounted
// (/sys/fs/cgroup), selfCgroup the path of /proc/self/cgroup.
func applyMemoryLimit(mode MemoryLimit, log *slog.Logger, cgroupRoot, selfCgroup string) (restore func()) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if mode == MemoryLimitOff {
		return func() {}
	}
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		log.Info("GOMEMLIMIT is set: the memory limit is not adjusted", "gomemlimit", v)
		return func() {}
	}
	if mode == MemoryLimitAdaptive {
		return startMemoryGovernor(log).Stop
	}
	self, err := os.ReadFile(selfCgroup)
	if err != nil {
		return func() {} // no cgroups (another system): no limit to follow
	}
	max, ok, err := cgroupMemoryMax(cgroupRoot, self)
	if err != nil {
		log.Warn("cgroup memory limit unreadable: the Go runtime's memory limit is not set", "error", err)
		return func() {}
	}
	if !ok {
		return func() {}
	}
	limit := int64(float64(max) * cgroupMemoryFraction)
	prev := debug.SetMemoryLimit(limit)
	log.Info("memory limit set from the cgroup", "cgroup_limit", max, "limit", limit)
	return func() { debug.SetMemoryLimit(prev) }
}

// memoryGovernor (started by Run with MemoryLimitAdaptive) keeps the Go runtime's soft memory limit
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
