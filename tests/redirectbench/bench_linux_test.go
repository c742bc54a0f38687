package redirectbench

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/bpf"
	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/backends"
)

const (
	proxyUID   = 5678
	appUID     = 1000
	serverPort = 8080
)

var serverAddr = netip.AddrPortFrom(netip.MustParseAddr("198.51.100.10"), serverPort)

// answeredAddr is a destination the relay answers itself, without an
// upstream connection: the workload that leaves the least besides the
// redirection (the direct path reaches the echo server there).
var answeredAddr = netip.AddrPortFrom(netip.MustParseAddr("198.51.100.10"), serverPort+1)

// The relay's ports for the floor path: the app dials the relay itself, so
// nothing is redirected and nothing asks for the original destination.
const (
	floorRelayAddr    = "127.0.0.1:15002" // relayed to serverAddr
	floorAnsweredAddr = "127.0.0.1:15003" // answered by the relay
	// The same, but the relay asks SO_ORIGINAL_DST as behind a redirection
	// (and is told there is none): the floor of a redirection whose proxy
	// asks, which every backend's is.
	floorAskRelayAddr    = "127.0.0.1:15004"
	floorAskAnsweredAddr = "127.0.0.1:15005"
)

// durations and sizes, overridable for a quick run.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

type result struct {
	backend        string
	connsPerSec    float64
	answeredPerSec float64       // new connections/s that the relay answers itself
	cpuPerConn     time.Duration // user+system CPU of this process (clients, relay, server, and the kernel work done on their behalf) per connection
	cpuPerAnswered time.Duration // the same per proxy-answered connection
	// split: per relayed and per proxy-answered connection, each process's
	// CPU and context switches.
	split map[string]split
	// progs: for the eBPF paths with BENCH_BPF_STATS=1, what each program
	// cost per connection of each workload ("relayed", "proxy-answered").
	progs        map[string]map[string]progCost
	p50, p99     time.Duration
	mbytesPerSec float64
}

// split is where a connection's CPU went: the client's, the relay's and the
// server's share (the kernel work done in their context included), and
// their context switches, per connection.
type split struct {
	client, relay, server       time.Duration
	clientSw, relaySw, serverSw float64
}

// progCost is one program's share of a connection: how often it ran and
// for how long in all, per connection.
type progCost struct {
	runs float64
	ns   float64
}

// path is one way a connection reaches the upstream: direct, or
// redirected by a backend into the relay.
type path struct {
	name       string
	relayed    bool
	floor      bool // the app dials the relay's own address: no redirection at all
	ask        bool // with floor: the relay asks SO_ORIGINAL_DST all the same
	accelerate bool
	backend    redirect.Backend // "" = direct
}

var paths = []path{
	{name: "direct (no proxy)"},
	{name: "relay dialed directly (no redirection)", relayed: true, floor: true},
	{name: "relay dialed directly (no redirection; asks SO_ORIGINAL_DST)", relayed: true, floor: true, ask: true},
	{name: "iptables-nft", relayed: true, backend: redirect.BackendIPTablesNFT},
	{name: "iptables-legacy", relayed: true, backend: redirect.BackendIPTablesLegacy},
	{name: "nftables", relayed: true, backend: redirect.BackendNFTables},
	{name: "ebpf", relayed: true, backend: redirect.BackendEBPF},
	{name: "ebpf --ebpf-accelerate", relayed: true, backend: redirect.BackendEBPF, accelerate: true},
}

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(helperMain(role))
	}
	os.Exit(m.Run())
}

// TestCompareBackends measures every path BENCH_REPS times, interleaved
// (each repetition runs the paths in a rotated order), each measurement in
// a fresh lab so that no backend inherits another's kernel state (conntrack,
// legacy nat hooks, TIME_WAIT sockets), and prints the median of each
// figure. BENCH_ONLY (comma-separated path names) narrows the run.
func TestCompareBackends(t *testing.T) {
	if os.Getenv("DETOUR_BENCH") != "1" {
		t.Skip("a benchmark: run with DETOUR_BENCH=1 (make bench-redirect)")
	}
	privtest.Require(t, "ip", "iptables-restore", "nft")
	if err := bpf.New(bpf.Options{}).Ready(); err != nil {
		privtest.Skip(t, err.Error())
	}
	// The whole run happens in a cgroup of our own: a socket belongs to the
	// cgroup of the process that made it (an accepted one to its listener's),
	// and the eBPF programs attach to that cgroup only.
	cg, pinDir, origin := ebpfLab(t)
	todo := paths
	if only := os.Getenv("BENCH_ONLY"); only != "" {
		todo = nil
		for _, p := range paths {
			if slices.Contains(strings.Split(only, ","), p.name) {
				todo = append(todo, p)
			}
		}
	}
	reps := envInt("BENCH_REPS", 3)
	runs := map[string][]result{}
	for rep := range reps {
		for k := range todo {
			p := todo[(k+rep)%len(todo)]
			r := measurePath(t, p, cg, pinDir, origin)
			runs[p.name] = append(runs[p.name], r)
		}
	}
	var load string
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| path | new connections/s | CPU per connection | proxy-answered connections/s | CPU per proxy-answered connection | request/response p50 | p99 | stream MB/s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, p := range todo {
		r := median(runs[p.name])
		fmt.Fprintf(&b, "| %s | %.0f | %s | %.0f | %s | %s | %s | %.0f |\n", p.name, r.connsPerSec, r.cpuPerConn.Round(time.Microsecond), r.answeredPerSec, r.cpuPerAnswered.Round(time.Microsecond/10), r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.mbytesPerSec)
	}
	fmt.Fprintf(&b, "| (medians of %d interleaved runs, %d clients, %ds each; load average after: %s) | | | | | | | |\n",
		reps, envInt("BENCH_WORKERS", 8), envInt("BENCH_SECONDS", 3), load)
	// Paired ratios: each repetition's figure over iptables-nft's of the
	// same repetition (measured next to it under the same load), median
	// over the repetitions.
	if base := runs["iptables-nft"]; len(base) == reps {
		fmt.Fprintf(&b, "\n| path | new connections/s ÷ iptables-nft (median of per-run ratios, min–max) | connections per CPU-second ÷ iptables-nft | proxy-answered ÷ iptables-nft | proxy-answered per CPU-second ÷ iptables-nft | p99 ÷ iptables-nft |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
		for _, p := range todo {
			rs := runs[p.name]
			if len(rs) != reps || p.name == "iptables-nft" {
				continue
			}
			conn, perCPU, answered, answeredCPU, p99 := make([]float64, reps), make([]float64, reps), make([]float64, reps), make([]float64, reps), make([]float64, reps)
			for i := range rs {
				conn[i] = rs[i].connsPerSec / base[i].connsPerSec
				perCPU[i] = float64(base[i].cpuPerConn) / float64(rs[i].cpuPerConn)
				answered[i] = rs[i].answeredPerSec / base[i].answeredPerSec
				answeredCPU[i] = float64(base[i].cpuPerAnswered) / float64(rs[i].cpuPerAnswered)
				p99[i] = float64(rs[i].p99) / float64(base[i].p99)
			}
			slices.Sort(conn)
			slices.Sort(perCPU)
			slices.Sort(answered)
			slices.Sort(answeredCPU)
			slices.Sort(p99)
			fmt.Fprintf(&b, "| %s | %.2f× (%.2f–%.2f) | %.2f× (%.2f–%.2f) | %.2f× (%.2f–%.2f) | %.2f× (%.2f–%.2f) | %.2f× |\n", p.name, mid(conn), conn[0], conn[len(conn)-1],
				mid(perCPU), perCPU[0], perCPU[len(perCPU)-1], mid(answered), answered[0], answered[len(answered)-1],
				mid(answeredCPU), answeredCPU[0], answeredCPU[len(answeredCPU)-1], mid(p99))
		}
	}
	splitTable(&b, todo, runs)
	progTable(&b, todo, runs)
	fmt.Print(b.String())
}

// splitTable prints where each workload's CPU per connection went, by
// process, with the context switches per connection (medians over the
// repetitions).
func splitTable(b *strings.Builder, todo []path, runs map[string][]result) {
	fmt.Fprintf(b, "\n| path | connections | CPU per connection: client | relay | server | context switches per connection: client | relay | server |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, p := range todo {
		for _, load := range []string{"relayed", "proxy-answered"} {
			var v [6][]float64
			for _, r := range runs[p.name] {
				sp := r.split[load]
				for i, f := range []float64{float64(sp.client), float64(sp.relay), float64(sp.server), sp.clientSw, sp.relaySw, sp.serverSw} {
					v[i] = append(v[i], f)
				}
			}
			if len(v[0]) == 0 {
				continue
			}
			for i := range v {
				slices.Sort(v[i])
			}
			us := func(f float64) string { return time.Duration(f).Round(time.Microsecond / 10).String() }
			relayCPU, relaySw := "–", "–"
			if p.relayed {
				relayCPU, relaySw = us(mid(v[1])), fmt.Sprintf("%.1f", mid(v[4]))
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %.1f | %s | %.1f |\n", p.name, load, us(mid(v[0])), relayCPU, us(mid(v[2])), mid(v[3]), relaySw, mid(v[5]))
		}
	}
}

// progTable prints, for the paths measured with BENCH_BPF_STATS=1, each
// eBPF program's runs and run time per connection of each workload (medians
// over the repetitions), as the kernel counted them.
func progTable(b *strings.Builder, todo []path, runs map[string][]result) {
	header := false
	for _, p := range todo {
		for _, load := range []string{"relayed", "proxy-answered"} {
			names := map[string]bool{}
			for _, r := range runs[p.name] {
				for n := range r.progs[load] {
					names[n] = true
				}
			}
			if len(names) == 0 {
				continue
			}
			if !header {
				fmt.Fprintf(b, "\n| path | connections | program | runs per connection | ns per run | ns per connection |\n| --- | --- | --- | ---: | ---: | ---: |\n")
				header = true
			}
			var total []float64
			for _, r := range runs[p.name] {
				var sum float64
				for _, c := range r.progs[load] {
					sum += c.ns
				}
				total = append(total, sum)
			}
			for _, n := range slices.Sorted(maps.Keys(names)) {
				var rn, ns []float64
				for _, r := range runs[p.name] {
					c := r.progs[load][n]
					rn, ns = append(rn, c.runs), append(ns, c.ns)
				}
				slices.Sort(rn)
				slices.Sort(ns)
				perRun := 0.0
				if mid(rn) > 0 {
					perRun = mid(ns) / mid(rn)
				}
				fmt.Fprintf(b, "| %s | %s | %s | %.2f | %.0f | %.0f |\n", p.name, load, n, mid(rn), perRun, mid(ns))
			}
			slices.Sort(total)
			fmt.Fprintf(b, "| %s | %s | (all) | | | %.0f |\n", p.name, load, mid(total))
		}
	}
}

// mid is the median of sorted v.
func mid(v []float64) float64 {
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// median takes each figure's median on its own.
func median(rs []result) result {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return mid(v)
	}
	return result{
		connsPerSec:    pick(func(r result) float64 { return r.connsPerSec }),
		answeredPerSec: pick(func(r result) float64 { return r.answeredPerSec }),
		cpuPerConn:     time.Duration(pick(func(r result) float64 { return float64(r.cpuPerConn) })),
		cpuPerAnswered: time.Duration(pick(func(r result) float64 { return float64(r.cpuPerAnswered) })),
		p50:            time.Duration(pick(func(r result) float64 { return float64(r.p50) })),
		p99:            time.Duration(pick(func(r result) float64 { return float64(r.p99) })),
		mbytesPerSec:   pick(func(r result) float64 { return r.mbytesPerSec }),
	}
}

// measurePath builds a fresh lab (pod and remote namespaces, the echo
// server, the relay), installs p's redirection, measures and tears it all
// down.
func measurePath(t *testing.T, p path, cg, pinDir, origin string) result {
	t.Helper()
	ctx := context.Background()
	l, err := lab.New(ctx, lab.Options{Prefix: labPrefix()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Every path leaves a socket in TIME_WAIT per connection towards the
	// one server address (the relay's upstream side, or the app's when
	// direct); let connect() reuse them as a busy sidecar host would, so the
	// port range is not what is measured.
	for k, v := range map[string]string{"net/ipv4/tcp_tw_reuse": "1", "net/ipv4/ip_local_port_range": "1024 65000"} {
		if err := l.Pod.Sysctl(k, v); err != nil {
			t.Fatal(err)
		}
	}
	// The echo server: with the lean tools a process of its own in the
	// remote namespace and in the cgroup this process came from, outside
	// the bench's (a remote host runs none of the pod's eBPF programs);
	// with BENCH_TOOLS=goroutines in this process, as before.
	var server *helperProc
	if leanTools() {
		server = startHelper(t, l.Remote, "server", nil)
		defer server.Stop()
		if err := os.WriteFile(filepath.Join(origin, "cgroup.procs"), []byte(server.ask(t, "pid")[0]), 0); err != nil {
			t.Fatal(err)
		}
		server.ask(t, "listen")
	} else {
		stopServer := startServer(t, l.Remote)
		defer stopServer()
	}
	var relay *helperProc
	if p.relayed {
		relay = startHelper(t, l.Pod, "relay", &lab.Cred{UID: proxyUID, GID: proxyUID})
		defer relay.Stop()
	}
	// Every backend is installed the way `detour install` does it, with the
	// same config: inbound capture off unless BENCH_INBOUND=1 (the eBPF
	// backend then adds its nftables inbound table, and with it conntrack
	// for every connection of the namespace, as the netfilter backends have).
	cfg := redirect.Default()
	cfg.Proxy.UID = proxyUID
	cfg.Inbound.Enabled = os.Getenv("BENCH_INBOUND") == "1"
	cfg.IPFamilies = redirect.IPFamiliesIPv4
	if p.backend != "" {
		cfg.Backend = p.backend
		cfg.EBPF.Accelerate = p.accelerate
		plan, err := redirect.NewPlan(cfg, redirect.Facts{})
		if err != nil {
			t.Fatal(err)
		}
		// The eBPF backend: the pod namespace enrolled (network-namespace
		// scope), the programs on our cgroup, pinned in our bpffs.
		// Other xtables users on the machine hold its lock (one for every
		// namespace) for seconds at a time.
		eng := backends.Engine(l.Pod.Path, backends.Options{LockWait: 2 * time.Minute, EBPF: backends.EBPFNetns(pinDir, cg)})
		eng.LockDir = t.TempDir()
		if _, err := eng.Install(ctx, plan); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := eng.Uninstall(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	var loader *bpf.Loader
	if p.backend == redirect.BackendEBPF && os.Getenv("BENCH_BPF_STATS") == "1" {
		loader = bpf.New(bpf.Options{PinDir: pinDir, Root: cg})
	}
	return measure(t, p, l.Pod, relay, server, loader)
}

// ebpfLab makes a private bpffs and a cgroup, and moves this process into the
// cgroup until the test ends; origin is the cgroup it came from.
func ebpfLab(t *testing.T) (cgroup, pinDir, origin string) {
	t.Helper()
	root := "/sys/fs/cgroup/unified"
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		root = "/sys/fs/cgroup"
	}
	removeStale(t, root)
	bpffs := filepath.Join(os.TempDir(), fmt.Sprintf("detour-bench-bpffs-%d", os.Getpid()))
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(bpffs)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Unmount(bpffs, unix.MNT_DETACH)
		os.Remove(bpffs)
	})
	cg := filepath.Join(root, fmt.Sprintf("detour-bench-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cg) })
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			origin = filepath.Join(root, rest)
		}
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), pid, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(filepath.Join(origin, "cgroup.procs"), pid, 0) })
	return cg, filepath.Join(bpffs, "detour"), origin
}

// labPrefix starts the names of this run's namespaces: "dtb-" and the
// process id, so that a later run can tell a dead run's from a live one's.
func labPrefix() string { return fmt.Sprintf("dtb-%d", os.Getpid()) }

// removeStale removes what a bench run that was killed left (it cannot tear
// down): its namespaces, its private bpffs (whose pinned links keep detour's
// programs attached) and its cgroup, each named with the run's process id,
// only when that process is gone.
func removeStale(t *testing.T, cgroupRoot string) {
	t.Helper()
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if pid, ok := privtest.DeadRun(e.Name(), "dtb-"); ok {
				gone, err := lab.RemoveLeftovers(context.Background(), fmt.Sprintf("dtb-%d", pid))
				t.Logf("removed the namespaces %v of a dead bench run (%v)", gone, err)
			}
		}
	}
	mounts, _ := filepath.Glob(filepath.Join(os.TempDir(), "detour-bench-bpffs-*"))
	for _, m := range mounts {
		if _, ok := privtest.DeadRun(m, "detour-bench-bpffs-"); ok {
			_ = unix.Unmount(m, unix.MNT_DETACH)
			os.Remove(m)
			t.Logf("removed the bpffs %s of a dead bench run", m)
		}
	}
	cgroups, _ := filepath.Glob(filepath.Join(cgroupRoot, "detour-bench-*"))
	for _, c := range cgroups {
		if _, ok := privtest.DeadRun(c, "detour-bench-"); ok {
			if err := os.Remove(c); err == nil { // refused while a process is still in it
				t.Logf("removed the cgroup %s of a dead bench run", c)
			}
		}
	}
}

// startServer runs the destination in the remote namespace: it echoes.
func startServer(t *testing.T, n *lab.NetNS) (stop func()) {
	t.Helper()
	var lns []net.Listener
	for _, port := range []uint16{serverAddr.Port(), answeredAddr.Port()} {
		var ln net.Listener
		if err := n.Do(nil, func() (err error) {
			ln, err = noKeepAlive.Listen(context.Background(), "tcp", ":"+strconv.Itoa(int(port)))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		go serveEcho(ln)
		lns = append(lns, ln)
	}
	return func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { io.Copy(c, c); c.Close() }()
	}
}

// measure runs the three workloads from a client process, as the app's
// user in the pod. With loader (BENCH_BPF_STATS=1, eBPF paths) the kernel's
// run-time statistics are on during the new-connection workloads, and what
// each program ran is recorded per connection; they cost every program run
// two clock reads, so such a run's other figures are not comparable.
func measure(t *testing.T, p path, pod *lab.NetNS, relay, server *helperProc, loader *bpf.Loader) result {
	t.Helper()
	name := p.name
	r := result{backend: name, split: map[string]split{}}
	client := startHelper(t, pod, "client", &lab.Cred{UID: appUID, GID: appUID})
	defer client.Stop()
	addr, answered := serverAddr.String(), answeredAddr.String()
	switch {
	case p.floor && p.ask:
		addr, answered = floorAskRelayAddr, floorAskAnsweredAddr
	case p.floor:
		addr, answered = floorRelayAddr, floorAnsweredAddr
	}

	// New connections: W workers, each connect, 1-byte echo, close, for D;
	// through the relay to the server, then answered by the relay itself.
	// CPU: the client's, the relay's and this process's (the server).
	workers, secs := envInt("BENCH_WORKERS", 8), envInt("BENCH_SECONDS", 3)
	var stats io.Closer
	if loader != nil {
		var err error
		if stats, err = bpf.EnableRunStats(); err != nil {
			t.Fatal(err)
		}
		defer stats.Close()
		r.progs = map[string]map[string]progCost{}
	}
	conns := func(load, to string) (perSec float64, cpuEach time.Duration) {
		var relay0, server0 []int64
		if relay != nil {
			relay0 = relay.askInts(t, "cpu")
		}
		if server != nil {
			server0 = server.askInts(t, "cpu")
		}
		var before map[string]bpf.RunStat
		if loader != nil {
			var err error
			if before, err = loader.RunStats(); err != nil {
				t.Fatal(err)
			}
		}
		self0, selfSw0 := cpuTime(), switches()
		v := client.askInts(t, fmt.Sprintf("conns %s %d %d", to, workers, secs*1000))
		n, clientCPU, clientSw := v[0], time.Duration(v[1]), v[3]
		if v[2] > 0 {
			t.Logf("%s, %s: %d connection attempts failed (the client's stderr has the last error)", name, load, v[2])
		}
		var serverCPU, relayCPU time.Duration
		var serverSw, relaySw int64
		if server != nil {
			s := server.askInts(t, "cpu")
			serverCPU, serverSw = time.Duration(s[0]-server0[0]), s[1]-server0[1]
		} else {
			// the echo server runs here
			serverCPU, serverSw = cpuTime()-self0, switches()-selfSw0
		}
		if relay != nil {
			r := relay.askInts(t, "cpu")
			relayCPU, relaySw = time.Duration(r[0]-relay0[0]), r[1]-relay0[1]
		}
		if n == 0 {
			return 0, 0
		}
		cpu := clientCPU + serverCPU + relayCPU
		each := func(d time.Duration) time.Duration { return d / time.Duration(n) }
		sp := split{each(clientCPU), each(relayCPU), each(serverCPU),
			float64(clientSw) / float64(n), float64(relaySw) / float64(n), float64(serverSw) / float64(n)}
		r.split[load] = sp
		t.Logf("%s, %s: per connection: CPU client %s, relay %s, server %s; context switches client %.1f, relay %.1f, server %.1f", name, load,
			sp.client, sp.relay, sp.server, sp.clientSw, sp.relaySw, sp.serverSw)
		if loader != nil {
			after, err := loader.RunStats()
			if err != nil {
				t.Fatal(err)
			}
			costs := map[string]progCost{}
			for name, a := range after {
				if runs := a.Runs - before[name].Runs; runs > 0 {
					costs[name] = progCost{runs: float64(runs) / float64(n), ns: float64(a.RunTime-before[name].RunTime) / float64(n)}
				}
			}
			r.progs[load] = costs
		}
		return float64(n) / float64(secs), cpu / time.Duration(n)
	}
	r.connsPerSec, r.cpuPerConn = conns("relayed", addr)
	r.answeredPerSec, r.cpuPerAnswered = conns("proxy-answered", answered)
	if stats != nil {
		stats.Close() // not for the other workloads
	}
	// Connections conntrack tracked in the pod namespace (they stay in
	// TIME_WAIT for two minutes): none where no netfilter hook needs it.
	ct := "-"
	pod.Do(nil, func() error {
		b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err == nil {
			ct = strings.TrimSpace(string(b))
		}
		return nil
	})
	if relay != nil {
		if e := relay.ask(t, "errors"); e[0] != "0" {
			t.Logf("%s: the relay failed %s connections, last: %s", name, e[0], strings.Join(e[1:], " "))
		}
	}

	// Request/response on one connection: 64 bytes each way.
	v := client.askInts(t, fmt.Sprintf("rr %s %d", addr, envInt("BENCH_RR", 20000)))
	r.p50, r.p99 = time.Duration(v[0]), time.Duration(v[1])
	if v[2] > 0 {
		t.Logf("%s: %d of %d blocking reads of the round trips said EAGAIN (read again)", name, v[2], envInt("BENCH_RR", 20000))
	}

	// Stream: write S MiB, read the echo back.
	size := int64(envInt("BENCH_STREAM_MIB", 256)) << 20
	v = client.askInts(t, fmt.Sprintf("stream %s %d", addr, size>>20))
	r.mbytesPerSec = float64(v[0]) / (1 << 20) / time.Duration(v[1]).Seconds()
	if v[0] != size {
		t.Errorf("%s: stream received %d of %d bytes", name, v[0], size)
	}
	t.Logf("%s: %.0f conn/s (%s CPU each), %.0f proxy-answered conn/s, p50 %s p99 %s, %.0f MB/s, %s conntrack entries", name, r.connsPerSec, r.cpuPerConn, r.answeredPerSec, r.p50, r.p99, r.mbytesPerSec, ct)
	return r
}
