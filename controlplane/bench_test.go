package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	rtmetrics "runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/detour-mesh/detour/controlplane/xds"
	"github.com/detour-mesh/detour/redirect"
)

// benchClients is the number of proxies of the fan-out benchmark:
// DETOUR_BENCH_CLIENTS overrides the default 1000.
func benchClients(b *testing.B) int {
	if s := os.Getenv("DETOUR_BENCH_CLIENTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("DETOUR_BENCH_CLIENTS=%q is not a positive number", s)
		}
		return n
	}
	return 1000
}

// benchServices gives each proxy 98 service listeners, plus its outbound and
// inbound listeners: 100 listeners, 102 clusters.
const benchServices = 98

// benchMesh has n workloads that reach every service. variant changes one
// service (its virtual IP and name), which changes one listener and one
// cluster of every node. With distinct, every workload serves its own inbound
// port, so no two nodes share a snapshot (the worst case for generation);
// otherwise they are replicas of one deployment and share one.
func benchMesh(n, variant int, distinct bool) *Mesh {
	m := &Mesh{OutboundPolicy: AllowAny}
	for i := range benchServices {
		name := fmt.Sprintf("svc-%03d", i)
		vip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		if i == 0 && variant%2 == 1 {
			name, vip = "svc-000-b", netip.AddrFrom4([4]byte{198, 51, 100, 200})
		}
		m.Services = append(m.Services, Service{
			Name:       name,
			VirtualIPs: []netip.Addr{vip},
			Ports:      []ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: ProtocolHTTP}},
			Endpoints: []Endpoint{
				{Address: netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})},
				{Address: netip.AddrFrom4([4]byte{203, 0, 113, byte(100 + i)})},
			},
		})
	}
	for i := range n {
		port := uint16(8080)
		if distinct {
			port = uint16(20000 + i)
		}
		m.Workloads = append(m.Workloads, Workload{
			NodeID:           benchNodeID(i),
			Addresses:        []netip.Addr{netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 250)})},
			Inbound:          []InboundPort{{Port: port, AppPort: port, Protocol: ProtocolTCP}},
			Reach:            []string{ReachAll},
			TransparentProxy: redirect.Default(),
		})
	}
	return m
}

// leanCodec decodes only what an ACK needs (version, type, nonce, resource
// count) from discovery responses. The benchmark measures the control plane;
// fully decoding 100 resources in each of a thousand in-process clients would
// measure the clients. Requests are encoded normally.
type leanCodec struct{}

func (leanCodec) Name() string { return "proto" }

func (leanCodec) Marshal(v any) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }

func (leanCodec) Unmarshal(data []byte, v any) error {
	switch r := v.(type) {
	case *leanResponse:
		return r.decode(data)
	case proto.Message:
		return proto.Unmarshal(data, r)
	}
	return fmt.Errorf("lean codec: cannot decode %T", v)
}

// leanResponse is the part of a (delta) discovery response a benchmark client reads.
type leanResponse struct {
	version, typeURL, nonce string
	resources               int
}

// decode reads DiscoveryResponse (version_info 1, resources 2, type_url 4,
// nonce 5) and DeltaDiscoveryResponse (system_version_info 1, resources 2,
// type_url 4, nonce 5): the field numbers agree.
func (r *leanResponse) decode(b []byte) error {
	*r = leanResponse{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case 1:
			r.version = string(v)
		case 2:
			r.resources++
		case 4:
			r.typeURL = string(v)
		case 5:
			r.nonce = string(v)
		}
	}
	return nil
}

// The fleet of benchmark clients runs in a child process (the test binary
// started again with fleetEnv set; see TestMain), so the heap and CPU the
// benchmark reports are the control plane's alone. Parent and child talk in
// JSON lines: the parent sends each round's target versions on the child's
// stdin, the child answers {"round": k} once every client has ACKed them.
const (
	fleetEnv         = "DETOUR_BENCH_FLEET"          // the control plane's ADS address
	fleetProtocolEnv = "DETOUR_BENCH_FLEET_PROTOCOL" // sotw or delta
	fleetClientsEnv  = "DETOUR_BENCH_FLEET_CLIENTS"  // how many; node ids are benchNodeID(i)
)

// The protocols of the fan-out benchmark's clients.
const (
	protocolSotW  = "sotw"
	protocolDelta = "delta"
)

func benchNodeID(i int) string { return fmt.Sprintf("proxy-%04d", i) }

type fleetRound struct {
	Round   int                     `json:"round"`
	Targets map[string]xds.Versions `json:"targets,omitempty"`
	Error   string                  `json:"error,omitempty"`
}

// fleet is the child's side: every client's ACKed versions and the round in
// progress.
type fleet struct {
	mu        sync.Mutex
	acked     map[string]xds.Versions
	round     fleetRound
	counted   map[string]bool
	remaining int
	out       *json.Encoder
}

func (f *fleet) emit(r fleetRound) {
	// Called with mu held, so lines never interleave.
	if err := f.out.Encode(r); err != nil {
		os.Exit(3)
	}
}

func (f *fleet) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.emit(fleetRound{Error: err.Error()})
}

func (f *fleet) ack(node, typeURL, version string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.acked[node]
	if typeURL == resourcev3.ListenerType {
		v.Listeners = version
	} else {
		v.Clusters = version
	}
	f.acked[node] = v
	f.check(node)
}

// check counts node when it reached the round's target. Called with mu held.
func (f *fleet) check(node string) {
	want, ok := f.round.Targets[node]
	if !ok || f.counted[node] || f.acked[node] != want {
		return
	}
	f.counted[node] = true
	if f.remaining--; f.remaining == 0 {
		f.emit(fleetRound{Round: f.round.Round})
	}
}

func (f *fleet) start(r fleetRound) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.round, f.counted, f.remaining = r, make(map[string]bool, len(r.Targets)), len(r.Targets)
	for node := range r.Targets {
		f.check(node) // clients may have ACKed before the targets arrived
	}
}

// runFleet is the child process: it connects the clients, then follows the
// rounds on stdin until it closes.
func runFleet() int {
	n, err := strconv.Atoi(os.Getenv(fleetClientsEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		return 2
	}
	addr, protocol := os.Getenv(fleetEnv), os.Getenv(fleetProtocolEnv)
	f := &fleet{acked: make(map[string]xds.Versions, n), out: json.NewEncoder(os.Stdout)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range n {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(os.Stderr, "fleet:", err)
			return 1
		}
		defer conn.Close()
		if protocol == protocolSotW {
			go f.runSotWClient(ctx, conn, benchNodeID(i))
		} else {
			go f.runDeltaClient(ctx, conn, benchNodeID(i))
		}
	}
	dec := json.NewDecoder(os.Stdin)
	for {
		var r fleetRound
		if err := dec.Decode(&r); err != nil {
			return 0 // stdin closed: the benchmark is over
		}
		f.start(r)
	}
}

var leanStreamDesc = grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// runSotWClient is one Envoy-like SotW ADS client: it asks for clusters and
// listeners on one stream and ACKs every response.
func (f *fleet) runSotWClient(ctx context.Context, conn *grpc.ClientConn, node string) {
	st, err := conn.NewStream(ctx, &leanStreamDesc, "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
		grpc.ForceCodec(leanCodec{}))
	if err != nil {
		f.fail(err)
		return
	}
	n := &corev3.Node{Id: node}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := st.SendMsg(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: t}); err != nil {
			f.fail(err)
			return
		}
	}
	for {
		var r leanResponse
		if err := st.RecvMsg(&r); err != nil {
			if ctx.Err() == nil {
				f.fail(err)
			}
			return
		}
		if err := st.SendMsg(&discoveryv3.DiscoveryRequest{TypeUrl: r.typeURL, VersionInfo: r.version, ResponseNonce: r.nonce}); err != nil {
			f.fail(err)
			return
		}
		f.ack(node, r.typeURL, r.version)
	}
}

// runDeltaClient is one delta ADS client subscribed to every cluster and listener.
func (f *fleet) runDeltaClient(ctx context.Context, conn *grpc.ClientConn, node string) {
	st, err := conn.NewStream(ctx, &leanStreamDesc, "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
		grpc.ForceCodec(leanCodec{}))
	if err != nil {
		f.fail(err)
		return
	}
	n := &corev3.Node{Id: node}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := st.SendMsg(&discoveryv3.DeltaDiscoveryRequest{Node: n, TypeUrl: t}); err != nil {
			f.fail(err)
			return
		}
	}
	for {
		var r leanResponse
		if err := st.RecvMsg(&r); err != nil {
			if ctx.Err() == nil {
				f.fail(err)
			}
			return
		}
		if err := st.SendMsg(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.typeURL, ResponseNonce: r.nonce}); err != nil {
			f.fail(err)
			return
		}
		f.ack(node, r.typeURL, r.version)
	}
}

// fleetProcess is the parent's handle on the child.
type fleetProcess struct {
	cmd   *exec.Cmd
	in    *json.Encoder
	stdin io.Closer
	done  chan fleetRound
	// stopped ends the wait for a reader of done: once the benchmark no
	// longer reads it, the child's lines (a failing fleet writes one per
	// client) are dropped instead of filling the pipe, which would block
	// the child, and stop waiting for it, for ever.
	stopped chan struct{}
}

func startFleet(b *testing.B, addr, protocol string, n int) *fleetProcess {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// GOMEMLIMIT and GOGC given to the benchmark are the control plane's:
	// the clients run with the runtime's defaults.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "GOMEMLIMIT=") || strings.HasPrefix(kv, "GOGC=")
	})
	cmd.Env = append(env, fleetEnv+"="+addr, fleetProtocolEnv+"="+protocol, fleetClientsEnv+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &fleetProcess{cmd: cmd, in: json.NewEncoder(stdin), stdin: stdin, done: make(chan fleetRound, 16), stopped: make(chan struct{})}
	go func() {
		dec := json.NewDecoder(stdout)
		for {
			var r fleetRound
			if err := dec.Decode(&r); err != nil {
				close(p.done)
				return
			}
			select {
			case p.done <- r:
			case <-p.stopped:
			}
		}
	}()
	return p
}

func (p *fleetProcess) stop() {
	close(p.stopped)
	p.stdin.Close()
	_ = p.cmd.Wait()
}

// wait waits until the fleet reports round k done.
func (p *fleetProcess) wait(b *testing.B, k int) {
	b.Helper()
	timeout := time.After(5 * time.Minute)
	for {
		select {
		case r, ok := <-p.done:
			switch {
			case !ok:
				b.Fatal("the client fleet exited")
			case r.Error != "":
				b.Fatalf("client: %s", r.Error)
			case r.Round == k:
				return
			}
		case <-timeout:
			b.Fatalf("round %d: not every client ACKed", k)
		}
	}
}

// BenchmarkFanOut measures a config change reaching every proxy: N ADS
// clients (DETOUR_BENCH_CLIENTS, default 1000), each with its own node id and
// gRPC connection and 100 listeners (102 clusters), run in a child process.
// One op is one change (a service replaced: one listener and one cluster of
// every node differ): from Server.Update until every client has ACKed the new
// listeners and clusters.
//
// Reported per change: ms/change (wall clock), cpu-ms/change (the control
// plane process's CPU time), build-ms/change (generating, validating and
// versioning every snapshot); and for the control plane process: heap-MiB
// (heap in use after the changes, after a GC), live-heap-MiB (live objects then),
// peak-heap-MiB (highest heap in use, sampled every 10 ms while changes were
// pushed), RSS-MiB and peak-RSS-MiB (VmRSS after the changes, VmHWM from the
// case's start, connections included), goroutines and stacks-MiB (after the
// changes, before the GC).
//
// Sub-benchmarks: sotw and delta, each with replicas (every proxy has the same
// resources, as the pods of one deployment) and distinct (every proxy has its
// own inbound listener, so a thousand snapshots are generated and validated).
func BenchmarkFanOut(b *testing.B) {
	for _, protocol := range []string{protocolSotW, protocolDelta} {
		for _, shape := range []string{"replicas", "distinct"} {
			b.Run(protocol+"/"+shape, func(b *testing.B) { benchFanOut(b, protocol, shape == "distinct") })
		}
	}
}

func benchFanOut(b *testing.B, protocol string, distinct bool) {
	n := benchClients(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The clients run in a child process: this process's resident set is the
	// control plane's (and the benchmark's small bookkeeping). Its peak is
	// taken from here on, connections included.
	runtime.GC()
	resetPeakRSS()
	_, startRSS := readRSS()
	// DETOUR_BENCH_MEMGOVERNOR=1 runs with the memory limit of
	// RunOptions.AdaptiveMemoryLimit (memlimit.go).
	if os.Getenv("DETOUR_BENCH_MEMGOVERNOR") == "1" {
		mem := startMemoryGovernor(nil)
		defer mem.Stop()
	}
	srv := NewServer(xds.Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.ServeXDS(l) }()
	defer srv.Stop()

	variant := 0
	// next returns the next mesh, outside the measured time.
	next := func() *Mesh {
		m := benchMesh(n, variant, distinct)
		variant++
		return m
	}
	// targets are every node's versions the control plane serves: the
	// round the fleet waits for. Taken from the server once it applied the
	// change (the fleet counts ACKs that came before them): building them
	// here would hold a second build of every snapshot in this process,
	// whose memory is the control plane's alone.
	targets := func() fleetRound {
		r := fleetRound{Round: variant, Targets: make(map[string]xds.Versions, n)}
		for i := range n {
			id := benchNodeID(i)
			v, ok := srv.Versions(id)
			if !ok {
				b.Fatalf("node %s is not served", id)
			}
			r.Targets[id] = v
		}
		return r
	}

	// Connect the fleet and let every client receive the first config.
	if _, err := srv.Update(ctx, next()); err != nil {
		b.Fatal(err)
	}
	fl := startFleet(b, l.Addr().String(), protocol, n)
	defer fl.stop()
	r := targets()
	if err := fl.in.Encode(r); err != nil {
		b.Fatal(err)
	}
	fl.wait(b, r.Round)
	if os.Getenv("DETOUR_BENCH_MEMCLASSES") != "" {
		p, c := readRSS()
		b.Logf("connected: RSS %.1f MiB, peak %.1f MiB", float64(c)/(1<<20), float64(p)/(1<<20))
	}

	// Peak heap in use, sampled without stopping the world (ReadMemStats
	// would): heap objects plus the unused part of in-use spans.
	var peak atomic.Uint64
	var measuring atomic.Bool // only while a change is being pushed
	stopSampling := make(chan struct{})
	var sampling sync.WaitGroup
	sampling.Add(1)
	go func() {
		defer sampling.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		samples := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
		for {
			select {
			case <-stopSampling:
				return
			case <-t.C:
				if !measuring.Load() {
					continue
				}
				rtmetrics.Read(samples)
				if v := samples[0].Value.Uint64() + samples[1].Value.Uint64(); v > peak.Load() {
					peak.Store(v)
				}
			}
		}
	}()

	b.ResetTimer()
	var total, cpu, buildTotal time.Duration
	for range b.N {
		b.StopTimer()
		m := next()
		runtime.GC()
		b.StartTimer()
		measuring.Store(true)
		start, startCPU := time.Now(), processCPU()
		res, err := srv.Update(ctx, m)
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Pushed) != n {
			b.Fatalf("update pushed %d nodes, want %d", len(res.Pushed), n)
		}
		r := targets()
		if err := fl.in.Encode(r); err != nil {
			b.Fatal(err)
		}
		fl.wait(b, r.Round)
		total += time.Since(start)
		cpu += processCPU() - startCPU
		buildTotal += res.Build
		measuring.Store(false)
	}
	b.StopTimer()
	close(stopSampling)
	sampling.Wait()
	peakRSS, rss := readRSS()
	// Goroutines and their stacks, beside the heap: gRPC runs four per
	// connection, whose stacks the collector counts in its goal.
	counts := []rtmetrics.Sample{{Name: "/sched/goroutines:goroutines"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	rtmetrics.Read(counts)
	// DETOUR_BENCH_MEMCLASSES=1 logs where the resident memory is: the
	// runtime's memory classes and the goroutine count, before the final GC.
	if os.Getenv("DETOUR_BENCH_MEMCLASSES") != "" {
		var samples []rtmetrics.Sample
		for _, d := range rtmetrics.All() {
			if strings.HasPrefix(d.Name, "/memory/classes/") || d.Name == "/sched/goroutines:goroutines" {
				samples = append(samples, rtmetrics.Sample{Name: d.Name})
			}
		}
		rtmetrics.Read(samples)
		for _, sm := range samples {
			if strings.HasSuffix(sm.Name, ":bytes") {
				b.Logf("%s = %.1f MiB", sm.Name, float64(sm.Value.Uint64())/(1<<20))
			} else {
				b.Logf("%s = %d", sm.Name, sm.Value.Uint64())
			}
		}
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if path := os.Getenv("DETOUR_BENCH_HEAPPROFILE"); path != "" {
		f, err := os.Create(path + "." + strings.ReplaceAll(b.Name(), "/", "_"))
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	perChange := total / time.Duration(b.N)
	cpuPerChange := cpu / time.Duration(b.N)
	buildPerChange := buildTotal / time.Duration(b.N)
	b.ReportMetric(float64(perChange.Microseconds())/1000, "ms/change")
	b.ReportMetric(float64(cpuPerChange.Microseconds())/1000, "cpu-ms/change")
	b.ReportMetric(float64(buildPerChange.Microseconds())/1000, "build-ms/change")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "live-heap-MiB")
	b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(rss)/(1<<20), "RSS-MiB")
	b.ReportMetric(float64(peakRSS)/(1<<20), "peak-RSS-MiB")
	b.ReportMetric(float64(counts[0].Value.Uint64()), "goroutines")
	b.ReportMetric(float64(counts[1].Value.Uint64())/(1<<20), "stacks-MiB")
	b.Logf("%s fan-out, %d clients × %d listeners (distinct=%v): %v per change until all ACKed (build %v, control plane CPU %v); control plane heap in use %.1f MiB after (live %.1f MiB), peak %.1f MiB; RSS %.1f MiB at start, %.1f MiB after, peak (VmHWM) %.1f MiB",
		protocol, n, benchServices+2, distinct, perChange.Round(time.Millisecond), buildPerChange.Round(time.Millisecond),
		cpuPerChange.Round(time.Millisecond), float64(ms.HeapInuse)/(1<<20), float64(ms.HeapAlloc)/(1<<20), float64(peak.Load())/(1<<20),
		float64(startRSS)/(1<<20), float64(rss)/(1<<20), float64(peakRSS)/(1<<20))
}

// BenchmarkBuild measures turning a mesh into every node's validated,
// versioned snapshot: DETOUR_BENCH_CLIENTS workloads (default 1000) with about
// 100 listeners each, as replicas (one shared snapshot) or all distinct. From
// scratch (the first build), and changed: one service replaced, built from
// the previous build's memo as Server.Update does.
func BenchmarkBuild(b *testing.B) {
	n := benchClients(b)
	for _, distinct := range []bool{false, true} {
		name := "replicas"
		if distinct {
			name = "distinct"
		}
		b.Run(name, func(b *testing.B) {
			m := benchMesh(n, 0, distinct)
			b.ReportAllocs()
			for range b.N {
				if _, err := buildSnapshots(m); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/change", func(b *testing.B) {
			prev, err := buildSnapshots(benchMesh(n, 0, distinct))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				m := benchMesh(n, i+1, distinct)
				b.StartTimer()
				if prev, err = buildFrom(m, prev.memo); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
