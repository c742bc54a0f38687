package bpf

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/origdst"
	"github.com/detour-mesh/detour/redirect"
)

// attachedIDs lists the programs attached to the cgroup for each of our
// attach types.
func attachedIDs(t *testing.T, cgroup string) map[ebpf.AttachType][]ebpf.ProgramID {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[ebpf.AttachType][]ebpf.ProgramID{}
	for _, a := range attachments {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: a.attach})
		if err != nil {
			t.Fatalf("query %s: %v", a.prog, err)
		}
		for _, p := range res.Programs {
			out[a.attach] = append(out[a.attach], p.ID)
		}
	}
	return out
}

// foreignConnect4 attaches another owner's cgroup/connect4 program (it allows
// every connect) to the cgroup, as a second tool on the same hook would.
func foreignConnect4(t *testing.T, cgroup string) ebpf.ProgramID {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Connect,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		License:      "Apache-2.0",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	lk, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lk.Close() })
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

func TestUninstallLeavesNothingAndSparesOtherPrograms(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	foreign := foreignConnect4(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	scope := Scope{Cgroup: l.cgroup}
	if _, err := ld.Apply(scope, testCapture(t, nil)); err != nil {
		t.Fatal(err)
	}
	got := attachedIDs(t, l.cgroup)
	for _, a := range attachments {
		if want := 1; a.attach == ebpf.AttachCGroupInet4Connect {
			want = 2
			if len(got[a.attach]) != want {
				t.Fatalf("connect4 programs after install = %v, want ours and the foreign one", got[a.attach])
			}
		} else if len(got[a.attach]) != want {
			t.Fatalf("%s programs after install = %v, want 1", a.prog, got[a.attach])
		}
	}
	// Redirection works with the foreign program beside ours.
	p := startProxy(t, l.ns, 15001)
	if _, err := dial(t, l.ns, "198.51.100.7:80"); err != nil {
		t.Fatal(err)
	}
	if got := p.next(t); got != "198.51.100.7:80" {
		t.Fatalf("SO_ORIGINAL_DST = %s", got)
	}

	// The ids of this install's maps: other detour installs (tests/ running
	// at the same time) have maps of the same names.
	mapIDs := map[ebpf.MapID]string{}
	pins, err := os.ReadDir(filepath.Join(l.pinDir, "maps"))
	if err != nil {
		t.Fatal(err)
	}
	for _, pin := range pins {
		m, err := ebpf.LoadPinnedMap(filepath.Join(l.pinDir, "maps", pin.Name()), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		mapIDs[id] = pin.Name()
	}
	if len(mapIDs) == 0 {
		t.Fatal("no map pinned after install")
	}

	if err := ld.Remove(scope); err != nil {
		t.Fatal(err)
	}
	if err := ld.Remove(scope); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if _, err := os.Stat(l.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory after uninstall: %v, want it gone", err)
	}
	got = attachedIDs(t, l.cgroup)
	for _, a := range attachments {
		want := 0
		if a.attach == ebpf.AttachCGroupInet4Connect {
			want = 1
		}
		if len(got[a.attach]) != want {
			t.Errorf("%s programs after uninstall = %v, want %d", a.prog, got[a.attach], want)
		}
	}
	if ids := got[ebpf.AttachCGroupInet4Connect]; len(ids) != 1 || ids[0] != foreign {
		t.Errorf("connect4 after uninstall = %v, want only the foreign program %d", ids, foreign)
	}
	// No map of this install is left in the kernel. Maps are freed
	// asynchronously once the last reference goes.
	deadline := time.Now().Add(2 * time.Second)
	for id, name := range mapIDs {
		for {
			m, err := ebpf.NewMapFromID(id)
			if err != nil {
				break
			}
			m.Close()
			if time.Now().After(deadline) {
				t.Errorf("map %s (id %d) is still in the kernel after uninstall", name, id)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// And connections are no longer redirected.
	if _, err := dial(t, l.ns, "198.51.100.7:80"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("dial after uninstall = %v, want ENETUNREACH", err)
	}
}

// echoProxy is a relay stand-in: it echoes each connection's bytes back.
func echoProxy(t *testing.T, l lab, port int) {
	t.Helper()
	var ln net.Listener
	inNS(t, l.ns, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", itoa(port)))
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
}

func itoa(i int) string { return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(i)).String()[8:] }

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("read = %q, %v; want %q", buf, err, msg)
	}
}

func TestReinstallUpdatesMapsAndKeepsConnections(t *testing.T) {
	l := newLab(t)
	ld, scope := cgroupScope(t, l)
	echoProxy(t, l, 15001)
	var c net.Conn
	inNS(t, l.ns, func() (err error) {
		c, err = net.DialTimeout("tcp", "198.51.100.7:9000", 2*time.Second)
		return err
	})
	defer c.Close()
	roundTrip(t, c, "before")

	// The new config excludes the port the open connection uses.
	changed, err := ld.Apply(scope, testCapture(t, func(c *redirect.Config) {
		c.Outbound.ExcludePorts = []redirect.PortRange{{First: 9000, Last: 9000}}
	}))
	if err != nil || !changed {
		t.Fatalf("re-install = %v, %v; want changed", changed, err)
	}
	roundTrip(t, c, "after")
	if got := c.RemoteAddr().String(); got != "198.51.100.7:9000" {
		t.Errorf("open connection's peer = %s", got)
	}
	// New connections follow the new config.
	if _, err := dial(t, l.ns, "198.51.100.7:9000"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("new connection to the newly excluded port = %v, want ENETUNREACH", err)
	}
	if _, err := dial(t, l.ns, "198.51.100.7:9001"); err != nil {
		t.Errorf("new connection to another port: %v", err)
	}
}

func TestNetnsScopesKeepTheirOwnConfigs(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	other := newLabNS(t)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	var cookieA, cookieB uint64
	inNS(t, l.ns, func() (err error) { cookieA, err = CurrentNetns(); return err })
	inNS(t, other, func() (err error) { cookieB, err = CurrentNetns(); return err })
	a, b := Scope{Netns: cookieA}, Scope{Netns: cookieB}
	if _, err := ld.Apply(a, testCapture(t, func(c *redirect.Config) {
		c.Outbound.ExcludePorts = []redirect.PortRange{{First: 8080, Last: 8080}}
	})); err != nil {
		t.Fatal(err)
	}
	if _, err := ld.Apply(b, testCapture(t, func(c *redirect.Config) {
		c.Outbound.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	})); err != nil {
		t.Fatal(err)
	}
	pa, pb := startProxy(t, l.ns, 15001), startProxy(t, other, 15001)

	// A excludes port 8080 only; B excludes 198.51.100.0/24 only.
	if _, err := dial(t, l.ns, "198.51.100.7:8080"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("A: dial excluded port = %v, want ENETUNREACH", err)
	}
	if _, err := dial(t, l.ns, "198.51.100.7:80"); err != nil {
		t.Errorf("A: %v", err)
	} else if got := pa.next(t); got != "198.51.100.7:80" {
		t.Errorf("A's proxy got %s", got)
	}
	if _, err := dial(t, other, "198.51.100.7:8080"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("B: dial excluded CIDR = %v, want ENETUNREACH", err)
	}
	if _, err := dial(t, other, "192.0.2.7:8080"); err != nil {
		t.Errorf("B: %v", err)
	} else if got := pb.next(t); got != "192.0.2.7:8080" {
		t.Errorf("B's proxy got %s", got)
	}

	// A namespace that is not enrolled is left alone, though its sockets
	// pass the same programs.
	third := newLabNS(t)
	if _, err := dial(t, third, "198.51.100.7:80"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("not enrolled: dial = %v, want ENETUNREACH", err)
	}

	// Unenrolling A keeps B working; unenrolling both leaves nothing.
	if err := ld.Remove(a); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, l.ns, "198.51.100.7:80"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("A after unenroll: dial = %v, want ENETUNREACH", err)
	}
	if _, err := dial(t, other, "192.0.2.7:81"); err != nil {
		t.Errorf("B after A's unenroll: %v", err)
	} else if got := pb.next(t); got != "192.0.2.7:81" {
		t.Errorf("B's proxy got %s", got)
	}
	if err := ld.Remove(b); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins after the last unenroll: %v, want none", err)
	}
}

// An app may send its request and close before the proxy accepts: the proxy
// must still learn the original destination.
func TestOriginalDestinationOutlivesTheAppsSocket(t *testing.T) {
	l := newLab(t)
	cgroupScope(t, l)
	var ln net.Listener
	inNS(t, l.ns, func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:15001"); return err })
	defer ln.Close()
	inNS(t, l.ns, func() error {
		c, err := net.DialTimeout("tcp", "198.51.100.7:8443", 2*time.Second)
		if err != nil {
			return err
		}
		c.Write([]byte("request"))
		return c.Close()
	})
	time.Sleep(100 * time.Millisecond) // the app's socket is closed by now
	c := acceptAsking(t, ln, "198.51.100.7:8443", "after the app closed")
	if got, _ := io.ReadAll(c); string(got) != "request" {
		t.Errorf("proxy read %q, want the app's request", got)
	}
}

// With TCP_FASTOPEN_CONNECT, connect() returns at once and the kernel sends
// the SYN at the first write, which may come after other connects of the
// same thread: each connection still reaches the proxy with the destination
// it dialed, and the app still sees that destination as its peer.
func TestFastOpenConnectsKeepTheirDestinations(t *testing.T) {
	l := newLab(t)
	cgroupScope(t, l)
	var ln net.Listener
	inNS(t, l.ns, func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:15001"); return err })
	defer ln.Close()
	dsts := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:8443"), netip.MustParseAddrPort("198.51.100.8:8444")}
	fds := make([]int, len(dsts))
	var sent uint32 // segments the sockets sent at connect()
	inNS(t, l.ns, func() error {
		// Fast open for clients, without a cookie from the server (0x4):
		// otherwise connect() sends the SYN at once, asking for a cookie.
		if err := os.WriteFile("/proc/sys/net/ipv4/tcp_fastopen", []byte("5"), 0); err != nil {
			return err
		}
		for i, d := range dsts {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			t.Cleanup(func() { unix.Close(fd) })
			fds[i] = fd
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1); err != nil {
				return err
			}
			if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: d.Addr().As4(), Port: int(d.Port())}); err != nil {
				return err
			}
			info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			if err != nil {
				return err
			}
			sent += info.Segs_out
		}
		if sent != 0 {
			return nil // not deferred: skipped below
		}
		// Both connects are done before either socket sends its SYN.
		for i, fd := range fds {
			if _, err := unix.Write(fd, []byte(dsts[i].String())); err != nil {
				return err
			}
		}
		return nil
	})
	if sent != 0 {
		t.Skipf("the kernel sent %d segments at connect(): it does not defer the SYN", sent)
	}
	for range dsts {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		dst, err := origdst.Get(c.(*net.TCPConn))
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, len(dsts[0].String()))
		n, rerr := io.ReadFull(c, buf)
		if err != nil || rerr != nil || dst.String() != string(buf[:n]) {
			t.Errorf("connection that sent %q: SO_ORIGINAL_DST = %v, %v (read: %v); want the address it sent", buf[:n], dst, err, rerr)
		}
	}
	for i, fd := range fds {
		sa, err := unix.Getpeername(fd)
		in4, ok := sa.(*unix.SockaddrInet4)
		if err != nil || !ok || netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)) != dsts[i] {
			t.Errorf("getpeername of the app's socket to %s = %v, %v", dsts[i], sa, err)
		}
	}
}

// Many namespaces enrolled at once (parallel CNI ADDs, separate processes in
// real life) each get a config of their own.
func TestParallelEnrollments(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	const n = 8
	scopes := make([]Scope, n)
	for i := range scopes {
		ns := l.ns
		if i > 0 {
			ns = newLabNS(t)
		}
		inNS(t, ns, func() (err error) { scopes[i].Netns, err = CurrentNetns(); return err })
	}
	errs := make(chan error, n)
	for i, s := range scopes {
		go func() {
			// A Loader per enrollment, as separate processes would have.
			ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
			_, err := ld.Apply(s, testCapture(t, func(c *redirect.Config) {
				c.Outbound.ExcludePorts = []redirect.PortRange{{First: uint16(1000 + i), Last: uint16(1000 + i)}}
			}))
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	st, err := ld.Observe()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[uint32]bool{}
	for i, s := range scopes {
		sc, ok := st.Scopes[s.Netns]
		if !ok {
			t.Fatalf("scope %d not enrolled", i)
		}
		ids[sc.Config] = true
		want := "ports outbound " + itoa(1000+i)
		if !slices.Contains(sc.Lines, want) {
			t.Errorf("scope %d lines lack %q: %v", i, want, sc.Lines)
		}
	}
	if len(ids) != n {
		t.Errorf("%d scopes share %d config ids", n, len(ids))
	}
	if links := st.Links; len(links) != 1 {
		t.Errorf("link directories = %v, want one set of programs for the namespace scope", links)
	}
	for _, s := range scopes {
		if err := ld.Remove(s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(l.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins after the last unenroll: %v", err)
	}
}

// A destination recorded for a redirected connection that the proxy never
// asked about must not answer for a later connection that reuses the app's
// address and port without being redirected (here: dialing the proxy's own
// address): that connection's SO_ORIGINAL_DST is not the old destination.
func TestNoStaleOriginalDestination(t *testing.T) {
	l := newLab(t)
	cgroupScope(t, l)
	var ln net.Listener
	inNS(t, l.ns, func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:15001"); return err })
	defer ln.Close()
	local, d := sameTupleDialer()
	accept := func() net.Conn {
		t.Helper()
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(3 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// Redirected; the proxy reads, never asks, and closes first (so the
	// app's side, which closes last, leaves no TIME_WAIT behind to block
	// the second connect).
	var app net.Conn
	inNS(t, l.ns, func() (err error) { app, err = d.Dial("tcp", "198.51.100.7:8443"); return err })
	app.Write([]byte("x"))
	pc := accept()
	io.ReadFull(pc, make([]byte, 1))
	pc.Close()
	io.ReadAll(app)
	app.Close()
	time.Sleep(100 * time.Millisecond)
	// Not redirected (a loopback destination), from the same address and port.
	inNS(t, l.ns, func() (err error) { app, err = d.Dial("tcp", "127.0.0.1:15001"); return err })
	defer app.Close()
	pc = accept()
	defer pc.Close()
	if got := pc.RemoteAddr().String(); got != local.String() {
		t.Fatalf("second connection from %s, want %s (the test needs the same tuple)", got, local)
	}
	if dst, err := origdst.Get(pc.(*net.TCPConn)); err == nil && dst.String() == "198.51.100.7:8443" {
		t.Errorf("SO_ORIGINAL_DST of a connection that was not redirected = %v: the previous connection's destination", dst)
	}
}

// sameTupleDialer dials from one loopback address and port each time
// (SO_REUSEADDR), so that connections one after another share their tuple.
func sameTupleDialer() (*net.TCPAddr, net.Dialer) {
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 20000 + int(time.Now().UnixNano()%10000)}
	return local, net.Dialer{LocalAddr: local, Timeout: 2 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
		return errors.Join(err, serr)
	}}
}

// The same for a redirected connection that never got established (nothing
// listened on the proxy's port, so no proxy ever could ask): a later
// connection from its address and port, dialing the proxy directly, is not
// answered with its destination.
func TestNoStaleOriginalDestinationOfARefusedConnection(t *testing.T) {
	l := newLab(t)
	cgroupScope(t, l)
	local, d := sameTupleDialer()
	inNS(t, l.ns, func() error {
		c, err := d.Dial("tcp", "198.51.100.7:8443")
		if err == nil {
			c.Close()
			return errors.New("dial through the redirection with no proxy listening: connected, want refused")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			// Only the redirection to the empty proxy port refuses; anything
			// else (unreachable, a timeout) means it never happened.
			return fmt.Errorf("dial through the redirection with no proxy listening: %v, want connection refused", err)
		}
		return nil
	})
	var ln net.Listener
	inNS(t, l.ns, func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:15001"); return err })
	defer ln.Close()
	var app net.Conn
	inNS(t, l.ns, func() (err error) { app, err = d.Dial("tcp", "127.0.0.1:15001"); return err })
	defer app.Close()
	pc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if got := pc.RemoteAddr().String(); got != local.String() {
		t.Fatalf("second connection from %s, want %s (the test needs the same tuple)", got, local)
	}
	if dst, err := origdst.Get(pc.(*net.TCPConn)); err == nil && dst.String() == "198.51.100.7:8443" {
		t.Errorf("SO_ORIGINAL_DST of a connection that was not redirected = %v: the refused connection's destination", dst)
	}
}

// A connection that is not redirected may share its local address and port
// with a redirected one that is still open (sockets bound with SO_REUSEADDR,
// or the kernel giving one ephemeral port to connections to different
// destinations): it must not take that one's original destination away
// before its proxy asks.
func TestSharedLocalPortKeepsTheOriginalDestination(t *testing.T) {
	l := newLab(t)
	cgroupScope(t, l)
	var ln, other net.Listener
	inNS(t, l.ns, func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:15001"); return err })
	defer ln.Close()
	inNS(t, l.ns, func() (err error) { other, err = net.Listen("tcp", "127.0.0.1:9000"); return err })
	defer other.Close()
	port := 20000 + int(time.Now().UnixNano()%10000)
	inNS(t, l.ns, func() error {
		for _, to := range []*unix.SockaddrInet4{
			{Addr: [4]byte{198, 51, 100, 7}, Port: 80}, // redirected
			{Addr: [4]byte{127, 0, 0, 1}, Port: 9000},  // not: loopback
		} {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			t.Cleanup(func() { unix.Close(fd) })
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				return err
			}
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); err != nil {
				return err
			}
			if err := unix.Connect(fd, to); err != nil {
				return err
			}
		}
		return nil
	})
	acceptAsking(t, ln, "198.51.100.7:80", "after another connection from the same local port")
}

// A connection redirected just before its namespace's scope goes (a switch to
// another backend, an uninstall) still gets its original destination when the
// proxy accepts it only while the scope is being removed: Remove waits for
// that question before it takes the getsockopt program away. One that no
// proxy ever asks for does not keep Remove waiting.
func TestRemoveAnswersConnectionsRedirectedBeforeIt(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	var cookie uint64
	inNS(t, l.ns, func() (err error) { cookie, err = CurrentNetns(); return err })
	scope := Scope{Netns: cookie}
	if _, err := ld.Apply(scope, testCapture(t, nil)); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	inNS(t, l.ns, func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:15001"); return err })
	defer ln.Close()
	var app net.Conn
	inNS(t, l.ns, func() (err error) { app, err = net.DialTimeout("tcp", "198.51.100.7:8443", 2*time.Second); return err })
	defer app.Close()

	removed := make(chan error, 1)
	go func() { removed <- ld.Remove(scope) }()
	time.Sleep(30 * time.Millisecond) // the proxy accepts while Remove runs
	acceptAsking(t, ln, "198.51.100.7:8443", "asked during Remove")
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins after Remove: %v, want none", err)
	}

	// Again, and this time the proxy never asks: Remove returns all the same.
	if _, err := ld.Apply(scope, testCapture(t, nil)); err != nil {
		t.Fatal(err)
	}
	var unasked net.Conn
	inNS(t, l.ns, func() (err error) {
		unasked, err = net.DialTimeout("tcp", "198.51.100.7:8443", 2*time.Second)
		return err
	})
	defer unasked.Close()
	go func() { removed <- ld.Remove(scope) }()
	select {
	case err := <-removed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Remove still waits for a connection no proxy asks for")
	}
}

// acceptAsking accepts a connection on ln as a proxy does, and checks the
// original destination SO_ORIGINAL_DST gives for it (when says when it was
// asked). The connection is closed when the test ends.
func acceptAsking(t *testing.T, ln net.Listener, want, when string) net.Conn {
	t.Helper()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	dst, err := origdst.Get(c.(*net.TCPConn))
	if err != nil || dst.String() != want {
		t.Errorf("SO_ORIGINAL_DST %s = %v, %v; want %s", when, dst, err, want)
	}
	return c
}
