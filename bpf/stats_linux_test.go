package bpf

import (
	"net"
	"net/netip"
	"testing"
)

// TestRunStatsCountWhatRan: with run-time statistics on, RunStats counts the
// runs of the programs linked under the pin directory: each redirected
// connection runs connect4 once and sockops several times, the proxy's
// SO_ORIGINAL_DST runs getsockopt, and a UDP datagram to a port other than
// 53 runs sendmsg4. Other sockets of the cgroup may add runs, never remove
// them.
func TestRunStatsCountWhatRan(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	scope := Scope{Cgroup: l.cgroup}
	if changed, err := ld.Apply(scope, testCapture(t, nil)); err != nil || !changed {
		t.Fatalf("Apply = %v, %v; want changed", changed, err)
	}
	t.Cleanup(func() {
		if err := ld.Remove(scope); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	p := startProxy(t, l.ns, 15001)
	stats, err := EnableRunStats()
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	before, err := ld.RunStats()
	if err != nil {
		t.Fatal(err)
	}
	const conns = 5
	dst := netip.MustParseAddrPort("198.51.100.7:8080")
	for range conns {
		inNS(t, l.ns, func() error {
			_, err := rawDial(dst)
			return err
		})
		if got := p.next(t); got != dst.String() {
			t.Fatalf("proxy's SO_ORIGINAL_DST = %s, want %s", got, dst)
		}
	}
	inNS(t, l.ns, func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.WriteToUDP([]byte("x"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
		return err
	})
	after, err := ld.RunStats()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		prog string
		min  uint64
	}{{"connect4", conns}, {"sockops", 2 * conns}, {"getsockopt", conns}, {"sendmsg4", 1}} {
		a, b := after[want.prog], before[want.prog]
		if runs := a.Runs - b.Runs; runs < want.min {
			t.Errorf("%s ran %d times, want at least %d", want.prog, runs, want.min)
		}
		if a.RunTime <= b.RunTime {
			t.Errorf("%s run time did not grow: %s then %s", want.prog, b.RunTime, a.RunTime)
		}
	}
}
