package bpf

import (
	"time"

	"github.com/cilium/ebpf"
)

// How long Remove waits for the proxy to ask for the original destination of
// the connections the connect hooks redirected just before the scope left
// (drain): at most drainMax in all, and no longer than drainIdle once none
// of them has been asked for. An entry that nobody will ask for (a connect
// that failed, a proxy that is not running) costs one drainIdle.
const (
	drainMax   = time.Second
	drainIdle  = 100 * time.Millisecond
	drainEvery = 5 * time.Millisecond
)

// drain waits, before the programs that answer SO_ORIGINAL_DST are detached,
// for the proxy to ask for the connections redirected but not yet asked for
// (tuples entries neither read nor closed) of the namespace netns (0: of
// every scope). Without it, a switch to another backend hands such a
// connection's proxy its own loopback address as the original destination:
// the kernel's SO_ORIGINAL_DST knows no NAT for it. The scope is unenrolled
// already, so the set only shrinks. Best effort and bounded: an error
// reading the map ends it.
func drain(tuples *ebpf.Map, netns uint64) (left int) {
	pending := inFlight(tuples, netns, nil)
	start, progress := time.Now(), time.Now()
	for len(pending) > 0 && time.Since(start) < drainMax && time.Since(progress) < drainIdle {
		time.Sleep(drainEvery)
		before := len(pending)
		pending = inFlight(tuples, netns, pending)
		if len(pending) < before {
			progress = time.Now()
		}
	}
	return len(pending)
}

// inFlight is the set of tuples entries of netns (0: any) that are neither
// read nor closed; with of given, only those of it that still are.
func inFlight(tuples *ebpf.Map, netns uint64, of map[detourTuple]bool) map[detourTuple]bool {
	left := map[detourTuple]bool{}
	if of != nil {
		for t := range of {
			var o detourOrig
			if tuples.Lookup(&t, &o) == nil && o.Read == 0 && o.Closed == 0 {
				left[t] = true
			}
		}
		return left
	}
	var (
		t detourTuple
		o detourOrig
	)
	it := tuples.Iterate()
	for it.Next(&t, &o) {
		if (netns == 0 || t.Netns == netns) && o.Read == 0 && o.Closed == 0 {
			left[t] = true
		}
	}
	if it.Err() != nil {
		return nil
	}
	return left
}
