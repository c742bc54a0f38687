package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"

	"github.com/detour-mesh/detour/internal/privtest"
)

// BenchmarkAdd measures the latency of one detour-cni ADD as the runtime sees
// it (process start, the decision, the rules installed in a fresh network
// namespace) and reports the median and the 99th percentile, and the median
// CPU time and page faults of the plugin processes (which the machine's load
// moves far less than the wall time).
//
// The cases without a suffix run as containerd and CRI-O do with the entry
// detour cni install writes: the entry declares the
// io.kubernetes.cri.pod-annotations capability and the runtime passes the
// pod's annotations in runtimeConfig, so an opted-in pod needs no API read and
// a plain pod one (its namespace). The "-api" cases are a runtime that passes
// no annotations: the pod (and for a plain pod its namespace) is read from the
// API server over a new TLS connection. "meshed-nftables" installs with the
// nftables backend (plugin config "config": {"backend": "nftables"}),
// "meshed" with the default (auto). "chain" is the whole conflist (bridge +
// host-local + detour-cni) for scale. Percentiles need samples: run with
// -benchtime=200x for stable figures.
func BenchmarkAdd(b *testing.B) {
	h := setup(b)
	ns := h.newNamespace(b, nil)
	nft := map[string]any{"config": map[string]any{"backend": "nftables"}}
	b.Run("detour-cni/meshed-nftables", func(b *testing.B) { benchPlugin(b, h, ns, enabled, nft, true) })
	b.Run("detour-cni/meshed-nftables-api", func(b *testing.B) { benchPlugin(b, h, ns, enabled, nft, false) })
	b.Run("detour-cni/meshed", func(b *testing.B) { benchPlugin(b, h, ns, enabled, nil, true) })
	b.Run("detour-cni/plain", func(b *testing.B) { benchPlugin(b, h, ns, nil, nil, true) })
	b.Run("detour-cni/plain-api", func(b *testing.B) { benchPlugin(b, h, ns, nil, nil, false) })
	b.Run("chain/meshed", func(b *testing.B) { benchChain(b, h, ns) })
}

// adds collects, per ADD, the wall time the runtime waited and the CPU time
// (user+sys) and page faults of the plugin processes it ran. CPU and faults
// move far less with the machine's load than the wall time does.
type adds struct {
	wall, cpu, faults []float64
	before            syscall.Rusage
	start             time.Time
}

// childUsage is the resource usage of the test process's children that have
// been waited for (RUSAGE_CHILDREN): the difference around one ADD is the
// plugin processes of that ADD.
func childUsage(b *testing.B) syscall.Rusage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		b.Fatal(err)
	}
	return ru
}

func (a *adds) begin(b *testing.B) {
	a.before = childUsage(b)
	a.start = time.Now()
}

func (a *adds) end(b *testing.B) {
	wall := time.Since(a.start)
	after := childUsage(b)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - a.before.Utime.Nano() - a.before.Stime.Nano())
	a.wall = append(a.wall, float64(wall.Microseconds())/1000)
	a.cpu = append(a.cpu, float64(cpu.Microseconds())/1000)
	a.faults = append(a.faults, float64(after.Minflt+after.Majflt-a.before.Minflt-a.before.Majflt))
}

// report reports the median and p99 wall time in milliseconds, and the median
// CPU time and page faults of the plugin processes.
func (a *adds) report(b *testing.B) {
	b.Helper()
	if len(a.wall) == 0 {
		return
	}
	at := func(v []float64, q float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		i := int(q*float64(len(v)) + 0.5)
		return v[min(max(i-1, 0), len(v)-1)]
	}
	b.ReportMetric(at(a.wall, 0.50), "p50-ms")
	b.ReportMetric(at(a.wall, 0.99), "p99-ms")
	b.ReportMetric(at(a.cpu, 0.50), "cpu-p50-ms")
	b.ReportMetric(at(a.faults, 0.50), "faults-p50")
	b.ReportMetric(float64(len(a.wall)), "samples")
}

// benchPlugin runs detour-cni alone, as the last plugin of a chain, with a
// prevResult and the extra plugin config keys, against a fresh namespace per
// ADD; fromRuntime adds the pod's annotations to runtimeConfig as a runtime
// does for an entry that declares the capability.
func benchPlugin(b *testing.B, h *harness, ns string, annotations map[string]string, extra map[string]any, fromRuntime bool) {
	p := h.newPod(b, ns, annotations, created)
	dir := b.TempDir()
	prev := fmt.Sprintf(`{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":%q}],"ips":[{"interface":0,"address":"198.51.100.200/24"}]}`, p.netns)
	keys := map[string]any{
		"cniVersion": "1.1.0", "name": "dt-bench", "type": "detour-cni",
		"kubeconfig": h.kubeconfig, "stateDir": filepath.Join(dir, "state"), "logFile": filepath.Join(dir, "log"),
		"prevResult": json.RawMessage(prev),
	}
	for k, v := range extra {
		keys[k] = v
	}
	if fromRuntime {
		keys["runtimeConfig"] = fromKubelet(annotations)
	}
	conf, err := json.Marshal(keys)
	if err != nil {
		b.Fatal(err)
	}
	plugin := filepath.Join(h.binDir, "detour-cni")
	var samples adds
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		netns := benchNetNS(b)
		args := &invoke.Args{
			ContainerID: fmt.Sprintf("bench-%d", i), NetNS: "/run/netns/" + netns, IfName: "eth0", Path: h.binDir,
			PluginArgs: p.rt.Args,
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		args.Command = "ADD"
		b.StartTimer()
		samples.begin(b)
		_, err := invoke.ExecPluginWithResult(ctx, plugin, conf, args, nil)
		samples.end(b)
		b.StopTimer()
		if err != nil {
			cancel()
			b.Fatalf("ADD: %v", err)
		}
		args.Command = "DEL"
		if err := invoke.ExecPluginWithoutResult(ctx, plugin, conf, args, nil); err != nil {
			b.Fatalf("DEL: %v", err)
		}
		cancel()
		privtest.Run(b, "ip", "netns", "delete", netns)
		b.StartTimer()
	}
	b.StopTimer()
	samples.report(b)
}

// benchChain runs the whole conflist through libcni, the detour-cni entry
// declaring the capability and the runtime passing the pod's annotations.
func benchChain(b *testing.B, h *harness, ns string) {
	n, err := h.newNetwork("dt-bench-chain", "1.1.0", map[string]any{"capabilities": map[string]bool{podAnnotationsCap: true}})
	if err != nil {
		b.Fatal(err)
	}
	var samples adds
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		p := h.newPod(b, ns, enabled, created)
		p.rt.CapabilityArgs = fromKubelet(enabled)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		b.StartTimer()
		samples.begin(b)
		_, err := n.cni.AddNetworkList(ctx, n.list, p.rt)
		samples.end(b)
		b.StopTimer()
		if err != nil {
			cancel()
			b.Fatalf("ADD: %v\n%s", err, n.logTail())
		}
		if err := n.cni.DelNetworkList(ctx, n.list, p.rt); err != nil {
			b.Fatalf("DEL: %v", err)
		}
		cancel()
		privtest.Run(b, "ip", "netns", "delete", p.netnsName)
		b.StartTimer()
	}
	b.StopTimer()
	samples.report(b)
}

// benchNetNS makes a namespace for one ADD; the caller deletes it.
func benchNetNS(b *testing.B) string {
	b.Helper()
	name := "dt-bench-" + randHex(5)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add: %v\n%s", err, out)
	}
	return name
}
