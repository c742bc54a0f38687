package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/plancases"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// BenchmarkApply measures the three operations of an install through the
// driver, in-process (the istio preset with DNS capture, both families):
// a fresh install, a re-run that changes nothing, and removal.
//
//	sudo go test -run '^$' -bench Apply -benchtime 200x ./redirect/nftables/
func BenchmarkApply(b *testing.B) {
	ctx := context.Background()
	rs, err := Render(mustCapture(b, plancases.Case{Preset: "istio", Sets: []string{"dns.capture=all"}, Facts: dualStack}))
	if err != nil {
		b.Fatal(err)
	}
	d, _ := benchDriver(b)
	b.Run("install", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			if err := d.RemoveTable(ctx, observeB(b, d)); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := d.ApplyRuleset(ctx, rs, observeB(b, d)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("no-change", func(b *testing.B) {
		for b.Loop() {
			if changed, err := d.ApplyRuleset(ctx, rs, observeB(b, d)); err != nil || changed {
				b.Fatalf("changed %v, err %v", changed, err)
			}
		}
	})
	b.Run("uninstall", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			if _, err := d.ApplyRuleset(ctx, rs, observeB(b, d)); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := d.RemoveTable(ctx, observeB(b, d)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchDriver(b *testing.B) (*Driver, privtest.NS) {
	ns := privtest.NetNS(b)
	f, err := os.Open(ns.Path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return New(Options{NetNSFd: int(f.Fd())}), ns
}

func observeB(b *testing.B, d *Driver) *Observed {
	o, err := d.ObserveTable(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return o
}

// BenchmarkConnect measures one captured outbound connection (connect,
// accept at the outbound port, one reply) with 1 and with 10,000 excluded
// CIDRs: the set lookup does not make the cost grow with the list (L13).
//
//	sudo go test -run '^$' -bench Connect -benchtime 2000x ./redirect/nftables/
func BenchmarkConnect(b *testing.B) {
	for _, n := range []int{1, 10000} {
		b.Run(fmt.Sprintf("excludeCIDRs=%d", n), func(b *testing.B) {
			ctx := context.Background()
			l, err := lab.New(ctx, lab.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { l.Close() })
			f, err := os.Open(l.Pod.Path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			var cidrs []string
			for i := range n {
				cidrs = append(cidrs, fmt.Sprintf("198.18.%d.%d/32", i/128, (i%128)*2))
			}
			c, err := redirect.NewCapture(cfgWith(b, "", "outbound.excludeCIDRs="+strings.Join(cidrs, ",")), v4Only)
			if err != nil {
				b.Fatal(err)
			}
			rs, err := Render(c)
			if err != nil {
				b.Fatal(err)
			}
			d := New(Options{NetNSFd: int(f.Fd())})
			if _, err := d.ApplyRuleset(ctx, rs, observeB(b, d)); err != nil {
				b.Fatal(err)
			}
			if _, err := l.Pod.Serve("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), lab.ServeOptions{}); err != nil {
				b.Fatal(err)
			}
			to := netip.AddrPortFrom(lab.RemoteIPv4, 8080)
			app := &lab.Cred{UID: 1000, GID: 1000}
			for b.Loop() {
				r, err := l.Pod.Dial(ctx, lab.DialOptions{To: to, Cred: app})
				if err != nil || r.Server != "outbound" {
					b.Fatalf("dial %s: %v %v", to, r, err)
				}
			}
		})
	}
}
