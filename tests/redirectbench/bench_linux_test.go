package redirectbench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/bpf"
	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/origdst"
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
	p50, p99       time.Duration
	mbytesPerSec   float64
}

// path is one way a connection reaches the upstream: direct, or
// redirected by a backend into the relay.
type path struct {
	name       string
	relayed    bool
	accelerate bool
	backend    redirect.Backend // "" = direct
}

var paths = []path{
	{name: "direct (no proxy)"},
	{name: "iptables-nft", relayed: true, backend: redirect.BackendIPTablesNFT},
	{name: "iptables-legacy", relayed: true, backend: redirect.BackendIPTablesLegacy},
	{name: "nftables", relayed: true, backend: redirect.BackendNFTables},
	{name: "ebpf", relayed: true, backend: redirect.BackendEBPF},
	{name: "ebpf --ebpf-accelerate", relayed: true, backend: redirect.BackendEBPF, accelerate: true},
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
	cg, pinDir := ebpfLab(t)
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
			r := measurePath(t, p, cg, pinDir)
			runs[p.name] = append(runs[p.name], r)
		}
	}
	var load string
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| path | new connections/s | CPU per connection | proxy-answered connections/s | request/response p50 | p99 | stream MB/s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, p := range todo {
		r := median(runs[p.name])
		fmt.Fprintf(&b, "| %s | %.0f | %s | %.0f | %s | %s | %.0f |\n", p.name, r.connsPerSec, r.cpuPerConn.Round(time.Microsecond), r.answeredPerSec, r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.mbytesPerSec)
	}
	fmt.Fprintf(&b, "| (medians of %d interleaved runs, %d clients, %ds each; load average after: %s) | | | | | | |\n",
		reps, envInt("BENCH_WORKERS", 8), envInt("BENCH_SECONDS", 3), load)
	// Paired ratios: each repetition's figure over iptables-nft's of the
	// same repetition (measured next to it under the same load), median
	// over the repetitions.
	if base := runs["iptables-nft"]; len(base) == reps {
		fmt.Fprintf(&b, "\n| path | new connections/s ÷ iptables-nft (median of per-run ratios, min–max) | proxy-answered ÷ iptables-nft | p99 ÷ iptables-nft |\n| --- | ---: | ---: | ---: |\n")
		for _, p := range todo {
			rs := runs[p.name]
			if len(rs) != reps || p.name == "iptables-nft" {
				continue
			}
			conn, answered, p99 := make([]float64, reps), make([]float64, reps), make([]float64, reps)
			for i := range rs {
				conn[i] = rs[i].connsPerSec / base[i].connsPerSec
				answered[i] = rs[i].answeredPerSec / base[i].answeredPerSec
				p99[i] = float64(rs[i].p99) / float64(base[i].p99)
			}
			slices.Sort(conn)
			slices.Sort(answered)
			slices.Sort(p99)
			fmt.Fprintf(&b, "| %s | %.2f× (%.2f–%.2f) | %.2f× (%.2f–%.2f) | %.2f× |\n", p.name, mid(conn), conn[0], conn[len(conn)-1],
				mid(answered), answered[0], answered[len(answered)-1], mid(p99))
		}
	}
	fmt.Print(b.String())
}

// connLoop runs workers clients as app in pod for dur, each opening a
// connection to addr, echoing 1 byte and closing, again and again; it
// returns the completed connections and the CPU time the process used.
func connLoop(pod *lab.NetNS, app *lab.Cred, addr string, workers int, dur time.Duration) (int64, time.Duration) {
	var n atomic.Int64
	var wg sync.WaitGroup
	cpu0 := cpuTime()
	deadline := time.Now().Add(dur)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pod.Do(app, func() error {
				buf := make([]byte, 1)
				for time.Now().Before(deadline) {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						continue
					}
					c.Write([]byte{'x'})
					if _, err := io.ReadFull(c, buf); err == nil {
						n.Add(1)
					}
					c.Close()
				}
				return nil
			})
		}()
	}
	wg.Wait()
	return n.Load(), cpuTime() - cpu0
}

// cpuTime is the user and system CPU time this process has used: every
// thread of the clients, the relay and the server, and the softirq work the
// kernel does in their context (loopback and veth delivery).
func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
		p50:            time.Duration(pick(func(r result) float64 { return float64(r.p50) })),
		p99:            time.Duration(pick(func(r result) float64 { return float64(r.p99) })),
		mbytesPerSec:   pick(func(r result) float64 { return r.mbytesPerSec }),
	}
}

// measurePath builds a fresh lab (pod and remote namespaces, the echo
// server, the relay), installs p's redirection, measures and tears it all
// down.
func measurePath(t *testing.T, p path, cg, pinDir string) result {
	t.Helper()
	ctx := context.Background()
	l, err := lab.New(ctx, lab.Options{Prefix: "dtb"})
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
	stopServer := startServer(t, l.Remote)
	defer stopServer()
	if p.relayed {
		d := newDialers(l.Pod)
		defer d.close()
		stop := startRelay(t, l.Pod, d)
		defer stop()
	}
	cfg := redirect.Default()
	cfg.Proxy.UID = proxyUID
	cfg.Inbound.Enabled = false
	cfg.IPFamilies = redirect.IPFamiliesIPv4
	switch p.backend {
	case "":
	case redirect.BackendEBPF:
		// The pod namespace enrolled (network-namespace scope), the
		// programs on our cgroup.
		ld := bpf.New(bpf.Options{PinDir: pinDir, Root: cg})
		var cookie uint64
		if err := l.Pod.Do(nil, func() (err error) { cookie, err = bpf.CurrentNetns(); return err }); err != nil {
			t.Fatal(err)
		}
		c, err := redirect.NewCapture(cfg, redirect.Facts{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ld.ApplyWith(bpf.Scope{Netns: cookie}, c, bpf.Settings{Accelerate: p.accelerate}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := ld.Remove(bpf.Scope{Netns: cookie}); err != nil {
				t.Error(err)
			}
		}()
	default:
		cfg.Backend = p.backend
		plan, err := redirect.NewPlan(cfg, redirect.Facts{})
		if err != nil {
			t.Fatal(err)
		}
		eng := backends.Engine(l.Pod.Path, backends.Options{})
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
	return measure(t, p.name, l.Pod)
}

// ebpfLab makes a private bpffs and a cgroup, and moves this process into the
// cgroup until the test ends.
func ebpfLab(t *testing.T) (cgroup, pinDir string) {
	t.Helper()
	root := "/sys/fs/cgroup/unified"
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		root = "/sys/fs/cgroup"
	}
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	cg := filepath.Join(root, fmt.Sprintf("detour-bench-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cg) })
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var origin string
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
	return cg, filepath.Join(bpffs, "detour")
}

// startServer runs the destination in the remote namespace: it echoes.
func startServer(t *testing.T, n *lab.NetNS) (stop func()) {
	t.Helper()
	var lns []net.Listener
	for _, port := range []uint16{serverAddr.Port(), answeredAddr.Port()} {
		var ln net.Listener
		if err := n.Do(nil, func() (err error) { ln, err = net.Listen("tcp", ":"+strconv.Itoa(int(port))); return err }); err != nil {
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

// dialers create sockets in the pod namespace as the proxy's user: socket
// creation must happen on a thread inside the namespace, with the fsuid the
// owner match and the eBPF programs read.
type dialers struct {
	req  chan dialReq
	done chan struct{}
}

type dialReq struct {
	addr  string
	reply chan dialRes
}

type dialRes struct {
	c   net.Conn
	err error
}

func newDialers(n *lab.NetNS) *dialers {
	d := &dialers{req: make(chan dialReq), done: make(chan struct{})}
	for range 16 {
		go n.Do(&lab.Cred{UID: proxyUID, GID: proxyUID}, func() error {
			for {
				select {
				case r := <-d.req:
					c, err := net.Dial("tcp", r.addr)
					r.reply <- dialRes{c, err}
				case <-d.done:
					return nil
				}
			}
		})
	}
	return d
}

func (d *dialers) close() { close(d.done) }

func (d *dialers) dial(addr string) (net.Conn, error) {
	r := dialReq{addr: addr, reply: make(chan dialRes, 1)}
	select {
	case d.req <- r:
	case <-d.done:
		return nil, net.ErrClosed
	}
	res := <-r.reply
	return res.c, res.err
}

var (
	relayErrors    atomic.Int64
	lastRelayError atomic.Value
)

// startRelay is the proxy: it accepts on the outbound port, reads the
// original destination and relays both ways with read(2)/write(2) of a 64
// KiB buffer, as Envoy does (not splice(2), which socket acceleration's
// caveat rules out).
func startRelay(t *testing.T, n *lab.NetNS, d *dialers) (stop func()) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(nil, func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:15001"); return err }); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				dst, err := origdst.Get(c.(*net.TCPConn))
				if err != nil {
					relayErrors.Add(1)
					lastRelayError.Store(err.Error())
					return
				}
				if dst == answeredAddr {
					buf := make([]byte, 1)
					if _, err := io.ReadFull(c, buf); err == nil {
						c.Write(buf)
					}
					return
				}
				up, err := d.dial(dst.String())
				if err != nil {
					relayErrors.Add(1)
					lastRelayError.Store(err.Error())
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() { relayCopy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
				relayCopy(c, up)
				<-done
			}()
		}
	}()
	return func() { ln.Close() }
}

// relayCopy copies with a read/write loop: the wrappers hide ReadFrom and
// WriteTo, so io.Copy cannot pick splice(2).
func relayCopy(dst, src net.Conn) {
	io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 64<<10))
}

// measure runs the three workloads as the app's user from the pod.
func measure(t *testing.T, name string, pod *lab.NetNS) result {
	t.Helper()
	r := result{backend: name}
	app := &lab.Cred{UID: appUID, GID: appUID}
	addr := serverAddr.String()

	// New connections: W workers, each connect, 1-byte echo, close, for D;
	// through the relay to the server, then answered by the relay itself.
	workers, dur := envInt("BENCH_WORKERS", 8), time.Duration(envInt("BENCH_SECONDS", 3))*time.Second
	n, cpu := connLoop(pod, app, addr, workers, dur)
	r.connsPerSec = float64(n) / dur.Seconds()
	if n > 0 {
		r.cpuPerConn = cpu / time.Duration(n)
	}
	n, _ = connLoop(pod, app, answeredAddr.String(), workers, dur)
	r.answeredPerSec = float64(n) / dur.Seconds()

	if e := relayErrors.Swap(0); e > 0 {
		t.Logf("%s: the relay failed %d connections, last: %v", name, e, lastRelayError.Load())
	}

	// Request/response on one connection: 64 bytes each way.
	var c net.Conn
	if err := pod.Do(app, func() (err error) { c, err = net.Dial("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	msg, buf := make([]byte, 64), make([]byte, 64)
	lat := make([]time.Duration, 0, 20000)
	for range envInt("BENCH_RR", 20000) {
		start := time.Now()
		c.Write(msg)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	c.Close()
	slices.Sort(lat)
	r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]

	// Stream: write S MiB, read the echo back.
	size := envInt("BENCH_STREAM_MIB", 256) << 20
	if err := pod.Do(app, func() (err error) { c, err = net.Dial("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	go func() {
		chunk := make([]byte, 256<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			c.Write(chunk)
		}
	}()
	got, _ := io.CopyN(io.Discard, c, int64(size))
	r.mbytesPerSec = float64(got) / (1 << 20) / time.Since(start).Seconds()
	c.Close()
	if got != int64(size) {
		t.Errorf("%s: stream received %d of %d bytes", name, got, size)
	}
	t.Logf("%s: %.0f conn/s (%s CPU each), %.0f proxy-answered conn/s, p50 %s p99 %s, %.0f MB/s", name, r.connsPerSec, r.cpuPerConn, r.answeredPerSec, r.p50, r.p99, r.mbytesPerSec)
	return r
}
