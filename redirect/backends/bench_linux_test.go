package backends_test

import (
	"context"
	"testing"

	"github.com/detour-mesh/detour/internal/plancases"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/backends"
)

// BenchmarkEngine measures, in-process, what `detour install`, its no-change
// re-run and `detour uninstall` do after the binary has started, with every
// Driver of the build as the CLI assembles them (so the glances at the other
// backends, detour's lock, the namespace entry, the facts and the TPROXY
// routing are in it): the istio preset with DNS capture, in a fresh
// namespace per backend. Beside `make bench-cli` (the same steps through the
// binary) it separates the orchestration from the process start. procs/op
// counts child processes.
//
//	sudo go test -run '^$' -bench Engine -benchtime 50x ./redirect/backends/
func BenchmarkEngine(b *testing.B) {
	for _, backend := range []redirect.Backend{redirect.BackendIPTablesLegacy, redirect.BackendIPTablesNFT, redirect.BackendNFTables} {
		b.Run(string(backend), func(b *testing.B) {
			privtest.Require(b, "iptables-legacy-restore", "iptables-nft-restore")
			ns := privtest.NetNS(b)
			cfg := plancases.Config(b, "istio", "dns.capture=all")
			cfg.Backend = backend
			e := backends.Engine(ns.Path, backends.Options{Backend: backend})
			ctx := context.Background()
			install := func(b *testing.B) redirect.Result {
				facts, err := e.Facts(ctx, cfg)
				if err != nil {
					b.Fatal(err)
				}
				p, err := redirect.NewPlan(cfg, facts)
				if err != nil {
					b.Fatal(err)
				}
				res, err := e.Install(ctx, p)
				if err != nil {
					b.Fatal(err)
				}
				return res
			}
			uninstall := func(b *testing.B) redirect.Result {
				res, err := backends.Engine(ns.Path, backends.Options{Backend: backends.AnyBackend}).Uninstall(ctx)
				if err != nil {
					b.Fatal(err)
				}
				return res
			}
			b.Run("install", func(b *testing.B) {
				procs := 0
				for b.Loop() {
					b.StopTimer()
					uninstall(b)
					b.StartTimer()
					procs += install(b).Processes
				}
				b.ReportMetric(float64(procs)/float64(b.N), "procs/op")
			})
			b.Run("no-change", func(b *testing.B) {
				install(b)
				procs := 0
				for b.Loop() {
					res := install(b)
					if res.Changed {
						b.Fatal("a re-run changed something")
					}
					procs += res.Processes
				}
				b.ReportMetric(float64(procs)/float64(b.N), "procs/op")
			})
			b.Run("uninstall", func(b *testing.B) {
				procs := 0
				for b.Loop() {
					b.StopTimer()
					install(b)
					b.StartTimer()
					procs += uninstall(b).Processes
				}
				b.ReportMetric(float64(procs)/float64(b.N), "procs/op")
			})
		})
	}
}
