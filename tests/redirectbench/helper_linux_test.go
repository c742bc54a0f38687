package redirectbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/origdst"
)

// roleEnv names the role of a re-executed test binary: TestMain runs the
// relay or the client instead of the tests when it is set.
const roleEnv = "DETOUR_BENCH_ROLE"

// The app and the proxy are processes of their own, started with
// `ip netns exec POD setpriv --reuid U …` inside the pod namespace, as a
// workload and its sidecar are: every goroutine of each may create sockets,
// with the process's own uid. (Run in the benchmark's process, each socket
// would have to be made on an OS thread locked into the namespace with the
// right fsuid, and Go's hand-offs to and from locked threads took a fifth of
// the CPU in a profile: a cost no real app or proxy has, which diluted the
// difference between the backends.)
//
// A helper serves commands on stdin, one a line, answering one line each on
// stdout ("error: …" on failure); it exits when stdin closes.
//
// relay (as the proxy's uid) listens on the outbound port, and server (as
// root, in the remote namespace) on the server's ports; both answer
//
//	cpu                     → its user+system CPU time so far, in ns, and its context switches
//	errors                  → the connections it failed since the last ask, and the last error
//
// server also answers
//
//	pid                     → its process id (for the bench to move it to another cgroup)
//	listen                  → "ok" once it listens
//
// client (as the app's uid) answers
//
//	conns ADDR WORKERS MS   → connections completed, CPU ns used, attempts failed, context switches
//	rr ADDR N               → p50 and p99 of N 64-byte round trips, in ns, and the reads of its blocking socket that said EAGAIN
//	stream ADDR MIB         → bytes echoed back, ns taken
//
// With BENCH_TOOLS=goroutines the relay and the client are the earlier
// ones (a goroutine per connection on Go's netpoller) and the echo server
// runs in the benchmark's process, as in the figures before 2026-12-05
// 15:00 UTC; by default they are the epoll loops and blocking threads of
// loop_linux_test.go.
func helperMain(role string) int {
	lean := leanTools()
	if lean {
		// Every loop goroutine spends its time in system calls, each on a
		// thread of its own: with a P each to spare, the runtime never has
		// to hand Ps between them (no futex wake-ups).
		runtime.GOMAXPROCS(64)
	}
	var do func(verb string, args []string) (string, error)
	switch role {
	case "relay":
		r := &relay{}
		var err error
		if lean {
			_, err = startLoops(envInt("BENCH_RELAY_THREADS", 2), []listenSpec{
				{addr: netip.MustParseAddrPort("127.0.0.1:15001")},
				{addr: netip.MustParseAddrPort(floorRelayAddr), fixed: serverAddr},
				{addr: netip.MustParseAddrPort(floorAnsweredAddr), echo: true},
				{addr: netip.MustParseAddrPort(floorAskRelayAddr), fixed: serverAddr, ask: true},
				{addr: netip.MustParseAddrPort(floorAskAnsweredAddr), echo: true, ask: true},
			}, &r.errors, &r.lastErr)
		} else {
			err = r.listen()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "relay:", err)
			return 1
		}
		do = r.do
	case "server":
		r := &relay{}
		do = func(verb string, args []string) (string, error) {
			switch verb {
			case "pid":
				return strconv.Itoa(os.Getpid()), nil
			case "listen":
				// Only now: the bench has moved this process out of its
				// cgroup (`ip netns exec` hides the cgroup tree from it),
				// so its sockets run none of the pod's eBPF programs, as a
				// remote host's would not.
				all := netip.IPv4Unspecified()
				_, err := startLoops(envInt("BENCH_SERVER_THREADS", 2), []listenSpec{
					{addr: netip.AddrPortFrom(all, serverAddr.Port()), echo: true},
					{addr: netip.AddrPortFrom(all, answeredAddr.Port()), echo: true},
				}, &r.errors, &r.lastErr)
				return "ok", err
			}
			return r.do(verb, args)
		}
	case "client":
		do = clientDo
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: want relay, server or client\n", roleEnv, role)
		return 2
	}
	fmt.Println("ready")
	lab.ServeLines(os.Stdin, os.Stdout, func(line string) (string, error) {
		f := strings.Fields(line)
		if len(f) == 0 {
			return "", errors.New("empty command")
		}
		return do(f[0], f[1:])
	})
	return 0
}

// cpuTime is the user and system CPU time this process has used: every
// thread, and the softirq work the kernel did in their context (loopback and
// veth delivery).
// switches is how often this process's threads were switched out so far:
// they blocked (voluntary) or were preempted (involuntary). Each is a trip
// through the scheduler, which on this paravirtualized VM costs several µs.
func switches() int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Nvcsw + ru.Nivcsw
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// relay is the proxy: it accepts on the outbound port, reads the original
// destination and relays both ways with read(2)/write(2) of a 64 KiB buffer,
// as Envoy does (not splice(2), which socket acceleration's caveat rules
// out). A connection to answeredAddr it answers itself.
type relay struct {
	errors  atomic.Int64
	lastErr atomic.Value
}

// leanTools reports whether the bench runs its lean tools (the default) or
// the earlier goroutine-per-connection ones (BENCH_TOOLS=goroutines).
func leanTools() bool { return os.Getenv("BENCH_TOOLS") != "goroutines" }

// listen starts the goroutine-per-connection relay (BENCH_TOOLS=goroutines).
func (r *relay) listen() error {
	// The outbound port asks each connection where it was going; the others
	// serve the floor paths (the app dials the relay itself, nothing is
	// redirected): one relays to the server, one answers, each also asking
	// SO_ORIGINAL_DST in vain (ask).
	for _, l := range []struct {
		addr  string
		fixed netip.AddrPort
		ask   bool
	}{{"127.0.0.1:15001", netip.AddrPort{}, false}, {floorRelayAddr, serverAddr, false}, {floorAnsweredAddr, answeredAddr, false},
		{floorAskRelayAddr, serverAddr, true}, {floorAskAnsweredAddr, answeredAddr, true}} {
		ln, err := noKeepAlive.Listen(context.Background(), "tcp", l.addr)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go r.serve(c.(*net.TCPConn), l.fixed, l.ask)
			}
		}()
	}
	return nil
}

func (r *relay) fail(err error) {
	r.errors.Add(1)
	r.lastErr.Store(err.Error())
}

// serve relays c to fixed or, when fixed is zero, to c's original
// destination. With ask it asks for the original destination of a
// connection to fixed as well, which nothing redirected (listenSpec.ask).
func (r *relay) serve(c *net.TCPConn, fixed netip.AddrPort, ask bool) {
	defer c.Close()
	dst := fixed
	if ask {
		if got, err := origdst.Get(c); err == nil {
			r.fail(fmt.Errorf("SO_ORIGINAL_DST answered %s for a connection nothing redirected", got))
			return
		}
	}
	if !dst.IsValid() {
		var err error
		if dst, err = origdst.Get(c); err != nil {
			r.fail(err)
			return
		}
	}
	if dst == answeredAddr {
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err == nil {
			c.Write(buf)
		}
		return
	}
	up, err := dialer.Dial("tcp", dst.String())
	if err != nil {
		r.fail(err)
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() { relayCopy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
	relayCopy(c, up)
	<-done
}

func (r *relay) do(verb string, _ []string) (string, error) {
	switch verb {
	case "cpu":
		return fmt.Sprintf("%d %d", int64(cpuTime()), switches()), nil
	case "errors":
		last, _ := r.lastErr.Load().(string)
		return fmt.Sprintf("%d %s", r.errors.Swap(0), last), nil
	}
	return "", fmt.Errorf("unknown command %q", verb)
}

// relayCopy copies with a read/write loop: the wrappers hide ReadFrom and
// WriteTo, so io.Copy cannot pick splice(2). The buffers are reused, as a
// proxy's are.
func relayCopy(dst, src net.Conn) {
	buf := buffers.Get().(*[]byte)
	defer buffers.Put(buf)
	io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *buf)
}

var buffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// Every socket of the bench is made without TCP keepalive, as Envoy makes
// its own by default: Go's default would add four setsockopt(2) calls per
// socket that no backend has anything to do with.
var (
	dialer      = &net.Dialer{KeepAlive: -1}
	noKeepAlive = &net.ListenConfig{KeepAlive: -1}
)

func clientDo(verb string, args []string) (string, error) {
	num := func(i int) (int, error) {
		if i >= len(args) {
			return 0, fmt.Errorf("%s: argument %d missing", verb, i+1)
		}
		return strconv.Atoi(args[i])
	}
	if len(args) == 0 {
		return "", fmt.Errorf("%s: no address", verb)
	}
	addr := args[0]
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "", fmt.Errorf("%s: %w", verb, err)
	}
	lean := leanTools()
	switch verb {
	case "conns":
		workers, err := num(1)
		if err != nil {
			return "", err
		}
		ms, err := num(2)
		if err != nil {
			return "", err
		}
		dur := time.Duration(ms) * time.Millisecond
		if !lean {
			sw := switches()
			n, cpu := connLoop(addr, workers, dur)
			return fmt.Sprintf("%d %d 0 %d", n, int64(cpu), switches()-sw), nil
		}
		sw := switches()
		n, cpu, failed, err := epollConnLoop(ap, workers, envInt("BENCH_CLIENT_THREADS", 2), dur)
		if failed > 0 {
			fmt.Fprintf(os.Stderr, "client: %d connections to %s failed, last: %v\n", failed, addr, err)
		}
		return fmt.Sprintf("%d %d %d %d", n, int64(cpu), failed, switches()-sw), nil
	case "rr":
		n, err := num(1)
		if err != nil {
			return "", err
		}
		var p50, p99 time.Duration
		var eagain int
		if lean {
			var lat []time.Duration
			if lat, eagain, err = blockingRoundTrips(ap, n); err == nil {
				slices.Sort(lat)
				p50, p99 = lat[len(lat)/2], lat[len(lat)*99/100]
			}
		} else {
			p50, p99, err = roundTrips(addr, n)
		}
		return fmt.Sprintf("%d %d %d", int64(p50), int64(p99), eagain), err
	case "stream":
		mib, err := num(1)
		if err != nil {
			return "", err
		}
		var got int64
		var took time.Duration
		if lean {
			got, took, err = blockingStream(ap, mib<<20)
		} else {
			got, took, err = stream(addr, mib<<20)
		}
		return fmt.Sprintf("%d %d", got, int64(took)), err
	}
	return "", fmt.Errorf("unknown command %q", verb)
}

// connLoop runs workers clients for dur, each opening a connection to addr,
// echoing 1 byte and closing, again and again; it returns the completed
// connections and the CPU time the process used.
func connLoop(addr string, workers int, dur time.Duration) (int64, time.Duration) {
	var n atomic.Int64
	var wg sync.WaitGroup
	cpu0 := cpuTime()
	deadline := time.Now().Add(dur)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1)
			for time.Now().Before(deadline) {
				c, err := dialer.Dial("tcp", addr)
				if err != nil {
					continue
				}
				c.Write([]byte{'x'})
				if _, err := io.ReadFull(c, buf); err == nil {
					n.Add(1)
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	return n.Load(), cpuTime() - cpu0
}

// roundTrips sends n 64-byte messages on one connection, each after the
// previous one's echo, and returns the p50 and p99 round trip.
func roundTrips(addr string, n int) (p50, p99 time.Duration, err error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	msg, buf := make([]byte, 64), make([]byte, 64)
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		c.Write(msg)
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

// stream writes size bytes and reads the echo back.
func stream(addr string, size int) (int64, time.Duration, error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	start := time.Now()
	go func() {
		chunk := make([]byte, 256<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			c.Write(chunk)
		}
	}()
	got, err := io.CopyN(io.Discard, c, int64(size))
	return got, time.Since(start), err
}

// helperProc is a running helper.
type helperProc struct {
	name string
	*lab.Child
}

// startHelper starts the test binary as role inside n, as cred (root when
// nil), with env added to this process's environment. It inherits this
// process's cgroup (where the eBPF programs are attached).
func startHelper(t *testing.T, n *lab.NetNS, role string, cred *lab.Cred, env ...string) *helperProc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := n.Command(context.Background(), cred, self)
	cmd.Env = append(append(os.Environ(), roleEnv+"="+role), env...)
	cmd.Stderr = os.Stderr
	c, err := lab.StartChild(cmd)
	if err != nil {
		t.Fatalf("start the %s: %v", role, err)
	}
	if line, err := c.Line(); err != nil || line != "ready" {
		c.Stop()
		t.Fatalf("%s: not ready: %q %v", role, line, err)
	}
	return &helperProc{name: role, Child: c}
}

// ask sends one command and returns the answer's fields.
func (h *helperProc) ask(t *testing.T, cmd string) []string {
	t.Helper()
	line, err := h.Do(cmd)
	if err != nil {
		t.Fatalf("%s %s: %v", h.name, cmd, err)
	}
	return strings.Fields(line)
}

// askInts sends one command whose answer is integers.
func (h *helperProc) askInts(t *testing.T, cmd string) []int64 {
	t.Helper()
	var v []int64
	for _, f := range h.ask(t, cmd) {
		i, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("%s %s: answer %q: %v", h.name, cmd, f, err)
		}
		v = append(v, i)
	}
	return v
}
