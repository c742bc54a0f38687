package redirectbench

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/origdst"
)

// The bench's own tools, as lean as a real sidecar and app are (the default;
// BENCH_TOOLS=goroutines runs the earlier ones, helper_linux_test.go):
//
//   - the relay and the echo server are epoll loops, one per OS thread (a
//     goroutine that only blocks in system calls keeps its thread), as
//     Envoy's workers are: non-blocking sockets registered once
//     (edge-triggered), each loop with its own SO_REUSEPORT listeners, no
//     goroutine, timer or allocation per connection;
//   - the client's new connections are epoll loops too (2 threads), and its
//     latency and stream workloads blocking sockets on locked threads.
//
// With a goroutine per connection on the runtime's netpoller the tools cost
// 280–475µs of CPU per relayed connection, against 15–40µs of redirection:
// the fixed cost hid what the bench is meant to compare. These cost 35–45%
// less; most of what is left is the kernel's work for the sockets
// (docs/ebpf.md, "The bench's own cost per connection"). The relay still reads the original destination with
// SO_ORIGINAL_DST on every redirected connection (origdst.FromFD), dials it
// and relays bytes both ways, half-close included; only the workload the
// relay answers itself echoes instead of dialing.

// listenSpec is one listening port of a loop: connections to it are relayed
// to fixed, or to their original destination when fixed is zero, or echoed
// back when echo is set or the destination is answeredAddr. With ask, a
// connection to fixed or echoed still asks SO_ORIGINAL_DST, as a proxy
// behind a redirection does, and must be told there is none (nothing
// redirected it): the system call's cost without any redirection.
type listenSpec struct {
	addr  netip.AddrPort
	fixed netip.AddrPort
	echo  bool
	ask   bool
}

// sock is one connected socket of a loop. For a relayed connection the two
// ends are each other's peer; an echoed connection is its own peer.
type sock struct {
	fd       int
	peer     *sock
	out      []byte // bytes read from peer not yet written to this socket
	readable bool   // may hold data (edge-triggered: known from the last event)
	rdhup    bool   // the other side shut its write side: read to EOF
	eof      bool   // read EOF (the other side will send nothing more)
	shut     bool   // our write side shut down
}

// loop is one epoll loop. Every field is touched by its own goroutine only.
type loop struct {
	ep    int
	specs []listenSpec
	socks map[int32]*sock
	buf   []byte
	// errors counts the connections it gave up (a failed accept,
	// SO_ORIGINAL_DST, connect, read or write other than a reset by the
	// peer); last keeps the latest.
	errors *atomic.Int64
	last   *atomic.Value
}

// Epoll data: Fd is the descriptor, Pad 0 a connected socket, i+1 the
// listener of specs[i].
const loopEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// startLoops starts n loops serving specs, each on an OS thread of its own
// with its own listeners (SO_REUSEPORT: the kernel spreads connections).
// It returns once every listener is bound, with the addresses the first
// loop's listeners are bound to (a port 0 is only meaningful with n = 1).
// The loops run until the process exits.
func startLoops(n int, specs []listenSpec, errs *atomic.Int64, last *atomic.Value) ([]netip.AddrPort, error) {
	ready := make(chan error, n)
	var bound []netip.AddrPort
	for i := range n {
		first := i == 0
		go func() {
			l := &loop{specs: specs, socks: map[int32]*sock{}, buf: make([]byte, 64<<10), errors: errs, last: last}
			addrs, err := l.listen()
			if err != nil {
				ready <- err
				return
			}
			if first {
				bound = addrs
			}
			ready <- nil
			l.run()
		}()
	}
	for range n {
		if err := <-ready; err != nil {
			return nil, err
		}
	}
	return bound, nil
}

func (l *loop) listen() ([]netip.AddrPort, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	var bound []netip.AddrPort
	l.ep = ep
	for i, s := range l.specs {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", s.addr, err)
		}
		// Accepted sockets inherit TCP_NODELAY (Envoy sets it on every
		// connection) from the listener: no system call per connection.
		for _, o := range [][2]int{{unix.SOL_SOCKET, unix.SO_REUSEADDR}, {unix.SOL_SOCKET, unix.SO_REUSEPORT}, {unix.IPPROTO_TCP, unix.TCP_NODELAY}} {
			if err := unix.SetsockoptInt(fd, o[0], o[1], 1); err != nil {
				return nil, fmt.Errorf("listen on %s: setsockopt: %w", s.addr, err)
			}
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: s.addr.Addr().As4(), Port: int(s.addr.Port())}); err != nil {
			return nil, fmt.Errorf("listen on %s: %w", s.addr, err)
		}
		if err := unix.Listen(fd, 4096); err != nil {
			return nil, fmt.Errorf("listen on %s: %w", s.addr, err)
		}
		// Level-triggered: accept a batch per wake-up, the rest next time.
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd), Pad: int32(i + 1)}); err != nil {
			return nil, fmt.Errorf("listen on %s: epoll_ctl: %w", s.addr, err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", s.addr, err)
		}
		in4 := sa.(*unix.SockaddrInet4)
		bound = append(bound, netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)))
	}
	return bound, nil
}

// yieldEvery is how often a loop passes through Go's scheduler. A goroutine
// that only ever makes system calls never does, and the runtime's monitor
// thread (sysmon) then takes its P away every 10ms as a "long-running" one;
// each such take keeps sysmon waking every 20µs, which cost 6% of the
// bench's processes' CPU (nanosleep is a trip through the hypervisor on this
// VM). A yield every 2ms costs a few hundred nanoseconds.
const yieldEvery = 2 * time.Millisecond

func (l *loop) run() {
	events := make([]unix.EpollEvent, 256)
	yielded := time.Now()
	for {
		if now := time.Now(); now.Sub(yielded) > yieldEvery {
			runtime.Gosched()
			yielded = now
		}
		n, err := unix.EpollWait(l.ep, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			l.fail(fmt.Errorf("epoll_wait: %w", err))
			return
		}
		for _, ev := range events[:n] {
			if ev.Pad > 0 {
				l.accept(int(ev.Fd), l.specs[ev.Pad-1])
				continue
			}
			s := l.socks[ev.Fd]
			if s == nil {
				continue // closed earlier in this batch
			}
			if ev.Events&unix.EPOLLERR != 0 {
				errno, _ := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR)
				l.abort(s, fmt.Errorf("socket error: %w", unix.Errno(errno)))
				continue
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
				s.readable = true
				s.rdhup = s.rdhup || ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0
			}
			if ev.Events&unix.EPOLLOUT != 0 && !l.flush(s) {
				continue
			}
			l.pump(s)
		}
	}
}

func (l *loop) fail(err error) {
	l.errors.Add(1)
	l.last.Store(err.Error())
}

// accept takes every pending connection of the listener lfd (at most 64,
// so that one listener does not starve the others' connections).
func (l *loop) accept(lfd int, spec listenSpec) {
	for range 64 {
		// No address: the relay asks SO_ORIGINAL_DST, nothing else.
		r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		if e != 0 {
			if e != unix.EAGAIN && e != unix.ECONNABORTED {
				l.fail(fmt.Errorf("accept4: %w", e))
			}
			return
		}
		l.serve(int(r), spec)
	}
}

// serve starts one accepted connection: echoed, or relayed to its
// destination.
func (l *loop) serve(fd int, spec listenSpec) {
	c := &sock{fd: fd}
	dst := spec.fixed
	if spec.ask {
		if got, err := origdst.FromFD(fd, false); err == nil {
			unix.Close(fd)
			l.fail(fmt.Errorf("SO_ORIGINAL_DST answered %s for a connection nothing redirected", got))
			return
		}
	}
	if !spec.echo && !dst.IsValid() {
		var err error
		if dst, err = origdst.FromFD(fd, false); err != nil {
			unix.Close(fd)
			l.fail(err)
			return
		}
	}
	if spec.echo || dst == answeredAddr {
		c.peer = c
		l.add(c)
		return
	}
	ufd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		l.fail(fmt.Errorf("socket: %w", err))
		return
	}
	unix.SetsockoptInt(ufd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Connect(ufd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		unix.Close(ufd)
		l.fail(fmt.Errorf("connect to %s: %w", dst, err))
		return
	}
	// Until the upstream connection is up, what the app sends waits in
	// up.out (a write before the handshake ends returns EAGAIN) and goes out
	// on its first EPOLLOUT.
	up := &sock{fd: ufd, peer: c}
	c.peer = up
	l.add(up)
	l.add(c)
}

func (l *loop) add(s *sock) {
	l.socks[int32(s.fd)] = s
	// Edge-triggered, registered once: an already readable socket (the
	// app's first bytes often arrive before the accept) is reported at once.
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, s.fd, &unix.EpollEvent{Events: loopEvents, Fd: int32(s.fd)}); err != nil {
		l.abort(s, fmt.Errorf("epoll_ctl: %w", err))
	}
}

// pump moves what s has to read into its peer until s has nothing more, the
// peer cannot take more (the rest waits in peer.out for its EPOLLOUT), or s
// reads EOF.
func (l *loop) pump(s *sock) {
	d := s.peer
	for s.readable && !s.eof && len(d.out) == 0 {
		n, err := unix.Read(s.fd, l.buf)
		switch {
		case err == unix.EAGAIN:
			s.readable = false
		case err != nil:
			l.abort(s, fmt.Errorf("read: %w", err))
			return
		case n == 0:
			s.eof, s.readable = true, false
		default:
			w, err := unix.Write(d.fd, l.buf[:n])
			if err == unix.EAGAIN {
				w = 0
			} else if err != nil {
				l.abort(s, fmt.Errorf("write: %w", err))
				return
			}
			if w < n {
				d.out = append(d.out[:0], l.buf[w:n]...)
			}
			// A short read drained the socket: a later arrival is a new
			// edge. Only a pending EOF must be read out now.
			if n < len(l.buf) && !s.rdhup {
				s.readable = false
			}
		}
	}
	l.settle(s)
}

// flush writes what waits in s.out; once it is all out, the peer's reading
// resumes. It reports false when the connection is gone.
func (l *loop) flush(s *sock) bool {
	if len(s.out) == 0 {
		return true
	}
	w, err := unix.Write(s.fd, s.out)
	if err == unix.EAGAIN {
		return true
	}
	if err != nil {
		l.abort(s, fmt.Errorf("write: %w", err))
		return false
	}
	s.out = s.out[:copy(s.out, s.out[w:])]
	if len(s.out) == 0 && s.peer != s {
		l.pump(s.peer)
	}
	return l.socks[int32(s.fd)] != nil
}

// settle passes an EOF that s read on to its peer once everything before it
// is written, and closes the connection when both ways are done.
func (l *loop) settle(s *sock) {
	d := s.peer
	if !s.eof || len(d.out) > 0 {
		return
	}
	if d == s || (d.eof && len(s.out) == 0) {
		l.close(s)
		return
	}
	if !d.shut {
		d.shut = true
		if err := unix.Shutdown(d.fd, unix.SHUT_WR); err != nil {
			l.abort(s, fmt.Errorf("shutdown: %w", err))
		}
	}
}

// close closes both ends (closing removes them from the epoll set).
func (l *loop) close(s *sock) {
	for _, x := range []*sock{s, s.peer} {
		if l.socks[int32(x.fd)] == x {
			delete(l.socks, int32(x.fd))
			unix.Close(x.fd)
		}
	}
}

// abort closes the connection after err; a reset or broken pipe is the
// peer's doing (the client closes the connections in flight when a workload
// ends), not a failure of the relay.
func (l *loop) abort(s *sock, err error) {
	if !errors.Is(err, unix.ECONNRESET) && !errors.Is(err, unix.EPIPE) {
		l.fail(err)
	}
	l.close(s)
}

// The client.

func sockaddr(a netip.AddrPort) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
}

// dialBlocking opens a blocking TCP connection with TCP_NODELAY, for the
// latency and stream workloads.
func dialBlocking(addr netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Connect(fd, sockaddr(addr)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return fd, nil
}

// readFull reads len(b) bytes from the blocking fd. It returns how often
// read(2) said EAGAIN, which a blocking socket without a receive timeout
// should never say: with --ebpf-accelerate it does, a few times in 5,000
// round trips on this kernel (6.18; the sockmap receive path in tcp_bpf.c
// answers -EAGAIN when its wait for data ends without data), and an app
// that is not ready for it fails. This one reads again, as Go's runtime
// does for its own sockets.
func readFull(fd int, b []byte) (eagain int, err error) {
	for got := 0; got < len(b); {
		n, err := unix.Read(fd, b[got:])
		if err == unix.EAGAIN {
			eagain++
			continue
		}
		if err != nil {
			return eagain, fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			return eagain, errors.New("read: EOF")
		}
		got += n
	}
	return eagain, nil
}

// blockingRoundTrips is roundTrips on a blocking socket of a locked thread;
// eagain counts the reads that said EAGAIN (see readFull).
func blockingRoundTrips(addr netip.AddrPort, n int) (lat []time.Duration, eagain int, err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, err := dialBlocking(addr)
	if err != nil {
		return nil, 0, err
	}
	defer unix.Close(fd)
	msg, buf := make([]byte, 64), make([]byte, 64)
	lat = make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := unix.Write(fd, msg); err != nil {
			return nil, eagain, fmt.Errorf("write: %w", err)
		}
		e, err := readFull(fd, buf)
		eagain += e
		if err != nil {
			return nil, eagain, err
		}
		lat = append(lat, time.Since(start))
	}
	return lat, eagain, nil
}

// blockingStream writes size bytes from one thread and reads the echo on
// another.
func blockingStream(addr netip.AddrPort, size int) (int64, time.Duration, error) {
	fd, err := dialBlocking(addr)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(fd)
	start := time.Now()
	go func() {
		runtime.LockOSThread()
		chunk := make([]byte, 256<<10)
		for sent := 0; sent < size; {
			n, err := unix.Write(fd, chunk[:min(len(chunk), size-sent)])
			if err != nil {
				return
			}
			sent += n
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, 256<<10)
	var got int64
	for got < int64(size) {
		n, err := unix.Read(fd, buf)
		if err == unix.EAGAIN {
			continue // see readFull
		}
		if err != nil {
			return got, time.Since(start), fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			break
		}
		got += int64(n)
	}
	return got, time.Since(start), nil
}

// epollConnLoop runs workers connections in flight for dur on threads
// OS threads with an epoll loop each, as an event-driven app: each
// connection a non-blocking connect, 1 byte written once connected, its echo
// read, close, and the next one opened. It returns the connections
// completed, the CPU time the process used, and the failed attempts with
// the last error. (A thread per connection on blocking sockets cost the
// client about 1.5 times the CPU: it slept in read(2) once per connection,
// where a loop under load handles several per wake-up.)
func epollConnLoop(addr netip.AddrPort, workers, threads int, dur time.Duration) (int64, time.Duration, int64, error) {
	var n, failed atomic.Int64
	var last atomic.Value // string
	var stop atomic.Bool
	sa := sockaddr(addr)
	threads = max(1, min(threads, workers))
	done := make(chan struct{}, threads)
	cpu0 := cpuTime()
	time.AfterFunc(dur, func() { stop.Store(true) })
	for i := range threads {
		slots := workers / threads
		if i < workers%threads {
			slots++
		}
		go func() {
			defer func() { done <- struct{}{} }()
			fail := func(err error) {
				failed.Add(1)
				last.Store(err.Error())
			}
			ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
			if err != nil {
				fail(err)
				return
			}
			defer unix.Close(ep)
			// fds[i] is slot i's socket; sent[i] whether its byte is out.
			fds, sent := make([]int, slots), make([]bool, slots)
			open := func(i int) {
				fds[i], sent[i] = -1, false
				for !stop.Load() {
					fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
					if err != nil {
						fail(fmt.Errorf("socket: %w", err))
						continue
					}
					if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
						unix.Close(fd)
						fail(fmt.Errorf("connect: %w", err))
						continue
					}
					if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLET, Fd: int32(fd), Pad: int32(i)}); err != nil {
						unix.Close(fd)
						fail(fmt.Errorf("epoll_ctl: %w", err))
						continue
					}
					fds[i] = fd
					return
				}
			}
			for i := range slots {
				open(i)
			}
			events := make([]unix.EpollEvent, slots)
			b := []byte{'x'}
			yielded := time.Now()
			for !stop.Load() {
				if now := time.Now(); now.Sub(yielded) > yieldEvery {
					runtime.Gosched()
					yielded = now
				}
				k, err := unix.EpollWait(ep, events, 100)
				if err != nil && err != unix.EINTR {
					fail(fmt.Errorf("epoll_wait: %w", err))
					return
				}
				for _, ev := range events[:max(k, 0)] {
					i := int(ev.Pad)
					fd := fds[i]
					if fd != int(ev.Fd) {
						continue
					}
					if ev.Events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
						errno, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
						fail(fmt.Errorf("connection: %w", unix.Errno(errno)))
						unix.Close(fd)
						open(i)
						continue
					}
					if !sent[i] && ev.Events&unix.EPOLLOUT != 0 {
						if _, err := unix.Write(fd, b); err != nil {
							fail(fmt.Errorf("write: %w", err))
							unix.Close(fd)
							open(i)
							continue
						}
						sent[i] = true
					}
					if sent[i] && ev.Events&unix.EPOLLIN != 0 {
						got, err := unix.Read(fd, b)
						if err == unix.EAGAIN {
							continue
						}
						if err != nil || got != 1 {
							fail(fmt.Errorf("read: %d bytes, %v", got, err))
						} else {
							n.Add(1)
						}
						unix.Close(fd)
						open(i)
					}
				}
			}
			for _, fd := range fds {
				if fd >= 0 {
					unix.Close(fd)
				}
			}
		}()
	}
	for range threads {
		<-done
	}
	var err error
	if msg, ok := last.Load().(string); ok {
		err = errors.New(msg)
	}
	return n.Load(), cpuTime() - cpu0, failed.Load(), err
}
