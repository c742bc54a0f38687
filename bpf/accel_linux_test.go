package bpf

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/origdst"
)

// relay is a sidecar stand-in that relays with plain read(2)/write(2), as
// Envoy does: it accepts on host:port in the lab's namespace, dials
// the upstream at to, and reports the bytes it received from the app.
// splice forces io.Copy's splice(2) path between the two TCP sockets instead.
func relay(t *testing.T, l lab, host string, port int, to string, splice bool) <-chan int64 {
	t.Helper()
	var ln net.Listener
	inNS(t, l.ns, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(host, itoa(port)))
		return err
	})
	t.Cleanup(func() { ln.Close() })
	relayed := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := origdst.Get(c.(*net.TCPConn)); err != nil {
			relayed <- -1
			return
		}
		var up net.Conn
		if err := doNS(l.ns.Path, func() (err error) { up, err = net.Dial("tcp", to); return err }); err != nil {
			relayed <- -1
			return
		}
		defer up.Close()
		cp := func(dst, src net.Conn) int64 {
			if splice {
				n, _ := io.Copy(dst, src) // *net.TCPConn to *net.TCPConn: splice(2)
				return n
			}
			// Hide ReadFrom/WriteTo: a read/write loop.
			n, _ := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 64<<10))
			return n
		}
		done := make(chan int64)
		go func() {
			n := cp(up, c)
			up.(*net.TCPConn).CloseWrite()
			done <- n
		}()
		cp(c, up)
		c.(*net.TCPConn).CloseWrite()
		relayed <- <-done
	}()
	return relayed
}

// copyEcho echoes each connection's bytes with a read/write loop (no splice).
func copyEcho(t *testing.T, l lab, port int) {
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
			go func() {
				io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 4096))
				c.Close()
			}()
		}
	}()
}

// accelEntries lists the sockets in the pinned accel_socks sockhash.
func accelEntries(t *testing.T, pinDir string) []detourSockKey {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", accelMap), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("load %s: %v", accelMap, err)
	}
	defer m.Close()
	var (
		k    detourSockKey
		next detourSockKey
		out  []detourSockKey
	)
	for err := m.NextKey(nil, &next); err == nil; err = m.NextKey(k, &next) {
		k = next
		out = append(out, k)
	}
	return out
}

// TestAccelerationRelaysEveryByte: with ebpf.accelerate on, a relay that
// reads and writes (no splice) receives every byte the app sends, the app
// gets every byte back, and the bytes went socket to socket: both ends are
// in accel_socks while the connection is open and the app's TCP socket sent
// (almost) nothing itself. IPv4 and IPv6.
func TestAccelerationRelaysEveryByte(t *testing.T) {
	for _, tc := range []struct {
		name, loopback, dst string
	}{
		{"ipv4", "127.0.0.1", "198.51.100.7:443"},
		{"ipv6", "::1", "[2001:db8::7]:443"},
	} {
		t.Run(tc.name, func(t *testing.T) { accelRelay(t, netip.MustParseAddr(tc.loopback), tc.dst) })
	}
}

func accelRelay(t *testing.T, loopback netip.Addr, dst string) {
	l := newLab(t)
	enter(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	scope := Scope{Cgroup: l.cgroup}
	if _, err := ld.ApplyWith(scope, testCapture(t, nil), Settings{Accelerate: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ld.Remove(scope) })
	var upstream net.Listener
	up := netip.AddrPortFrom(loopback, 9000).String()
	inNS(t, l.ns, func() (err error) { upstream, err = net.Listen("tcp", up); return err })
	defer upstream.Close()
	go serveEcho(upstream)
	relayed := relay(t, l, loopback.String(), 15001, up, false)

	const size = 16 << 20
	payload := make([]byte, size)
	rand.Read(payload)
	var c net.Conn
	inNS(t, l.ns, func() (err error) { c, err = net.DialTimeout("tcp", dst, 2*time.Second); return err })
	defer c.Close()
	roundTrip(t, c, "hello") // the relay has accepted: both ends are established

	keys := accelEntries(t, l.pinDir)
	app := c.LocalAddr().(*net.TCPAddr).AddrPort()
	var ends []string
	for _, k := range keys {
		if k.Lport == uint32(app.Port()) || k.Rport == uint32(app.Port()) {
			ends = append(ends, netip.AddrPortFrom(fromAddr16(k.Local).Unmap(), uint16(k.Lport)).String())
		}
	}
	slices.Sort(ends)
	if want := []string{netip.AddrPortFrom(loopback, 15001).String(), netip.AddrPortFrom(app.Addr().Unmap(), app.Port()).String()}; !slices.Equal(ends, want) && !slices.Equal(ends, []string{want[1], want[0]}) {
		t.Errorf("accel_socks holds %v for this connection, want both ends %v", ends, want)
	}

	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if n := <-relayed; n != size+5 {
		t.Errorf("the relay received %d of %d bytes", n, size+5)
	}
	if len(got) != size || !bytes.Equal(sha(got), sha(payload)) {
		t.Errorf("the app got %d bytes back (sha256 %x), want %d (sha256 %x)", len(got), sha(got), size, sha(payload))
	}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	raw.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if err != nil {
		t.Fatal(err)
	}
	if info.Bytes_sent > size/2 {
		t.Errorf("the app's TCP socket sent %d bytes itself: the payload was not accelerated", info.Bytes_sent)
	}
}

// TestAccelerationSpliceCaveat shows the documented caveat: with
// acceleration on, a proxy that moves bytes with splice(2) never sees what
// the app sent (the bytes wait outside the TCP receive queue), so nothing
// comes back. If this starts to pass bytes, the kernel changed: update
// docs/ebpf.md.
func TestAccelerationSpliceCaveat(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	scope := Scope{Cgroup: l.cgroup}
	if _, err := ld.ApplyWith(scope, testCapture(t, nil), Settings{Accelerate: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ld.Remove(scope) })
	echoProxy(t, l, 15001) // io.Copy(c, c): splice(2)
	var c net.Conn
	inNS(t, l.ns, func() (err error) { c, err = net.DialTimeout("tcp", "198.51.100.7:443", 2*time.Second); return err })
	defer c.Close()
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := c.Read(make([]byte, 4)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read through a splice(2) relay with acceleration = %d bytes, %v; want none (the documented caveat)", n, err)
	}
}

// TestAccelerationOffByDefault: without ebpf.accelerate no socket is put in
// accel_socks and no sk_msg program is attached; the plan's lines say so.
func TestAccelerationOffByDefault(t *testing.T) {
	l := newLab(t)
	ld, scope := cgroupScope(t, l)
	echoProxy(t, l, 15001)
	var c net.Conn
	inNS(t, l.ns, func() (err error) { c, err = net.DialTimeout("tcp", "198.51.100.7:443", 2*time.Second); return err })
	defer c.Close()
	roundTrip(t, c, "hello")
	if keys := accelEntries(t, l.pinDir); len(keys) != 0 {
		t.Errorf("accel_socks holds %d sockets with acceleration off", len(keys))
	}
	if _, err := os.Stat(filepath.Join(l.pinDir, "links", accelDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sk_msg link directory with acceleration off: %v, want none", err)
	}
	st, err := ld.Observe()
	if err != nil {
		t.Fatal(err)
	}
	lines, err := ld.Lines(st, scope)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range lines {
		if strings.Contains(line, "sk_msg") || strings.Contains(line, "accelerate") {
			t.Errorf("status line %q with acceleration off", line)
		}
	}
}

// TestAccelerationToggleAndUninstall: turning acceleration on shows in
// Observe (the sk_msg program and the config flag), turning it off detaches
// the program while an accelerated connection keeps working, and uninstall
// leaves no sk_msg or sockops program, map, link or pin of detour's.
func TestAccelerationToggleAndUninstall(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	scope := Scope{Cgroup: l.cgroup}
	c := testCapture(t, nil)
	if _, err := ld.ApplyWith(scope, c, Settings{Accelerate: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ld.Remove(scope) })
	st, err := ld.Observe()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ld.Lines(st, scope)
	if err != nil {
		t.Fatal(err)
	}
	want, err := LinesWith(c, Settings{Accelerate: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Observe after install with acceleration:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !slices.Contains(got, accelLine) || !strings.Contains(strings.Join(got, "\n"), "accelerate") {
		t.Fatalf("Observe does not show acceleration:\n%s", strings.Join(got, "\n"))
	}
	if changed, err := ld.ApplyWith(scope, c, Settings{Accelerate: true}); err != nil || changed {
		t.Fatalf("second install = %v, %v; want no change", changed, err)
	}

	copyEcho(t, l, 15001)
	var conn net.Conn
	inNS(t, l.ns, func() (err error) { conn, err = net.DialTimeout("tcp", "198.51.100.7:443", 2*time.Second); return err })
	defer conn.Close()
	roundTrip(t, conn, "accelerated")
	if n := len(accelEntries(t, l.pinDir)); n != 2 {
		t.Errorf("accel_socks holds %d sockets, want the app's and the proxy's", n)
	}

	// Off: the program is detached; the open connection keeps its path.
	if changed, err := ld.Apply(scope, c); err != nil || !changed {
		t.Fatalf("install without acceleration = %v, %v; want changed", changed, err)
	}
	if _, err := os.Stat(filepath.Join(l.pinDir, "links", accelDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sk_msg link after acceleration was turned off: %v, want none", err)
	}
	roundTrip(t, conn, "still there")
	st, err = ld.Observe()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := ld.Lines(st, scope); slices.Contains(got, accelLine) {
		t.Errorf("Observe shows the sk_msg program after acceleration was turned off")
	}
	// New connections are not accelerated.
	var c2 net.Conn
	inNS(t, l.ns, func() (err error) { c2, err = net.DialTimeout("tcp", "198.51.100.7:443", 2*time.Second); return err })
	roundTrip(t, c2, "plain")
	if n := len(accelEntries(t, l.pinDir)); n != 2 {
		t.Errorf("accel_socks holds %d sockets, want only the first connection's 2", n)
	}
	c2.Close()

	// On again, then uninstall with the connections closed.
	if _, err := ld.ApplyWith(scope, c, Settings{Accelerate: true}); err != nil {
		t.Fatal(err)
	}
	ids := pinnedObjects(t, l.pinDir)
	if len(ids) < 12 {
		t.Fatalf("pinned objects %v: want the maps, the sk_msg link and the cgroup links", ids)
	}
	conn.Close()
	if err := ld.Remove(scope); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory after uninstall: %v, want it gone", err)
	}
	// The closed sockets' hold on the sk_msg program is dropped after an RCU
	// grace period.
	assertFreed(t, ids, "uninstall")
}

type kernelObject struct {
	name  string
	alive func() bool
}

// assertFreed fails the test when any of objects is still in the kernel 5 s
// after what (the kernel frees programs and maps once the last reference
// goes, some after an RCU grace period).
func assertFreed(t *testing.T, objects []kernelObject, what string) {
	t.Helper()
	var left []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left = left[:0]
		for _, o := range objects {
			if o.alive() {
				left = append(left, o.name)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("still in the kernel 5 s after %s: %q", what, left)
	}
}

// pinnedObjects lists what detour pinned under pinDir by kernel id: every
// map, every link and the program of each link.
func pinnedObjects(t *testing.T, pinDir string) []kernelObject {
	t.Helper()
	var out []kernelObject
	maps, _ := filepath.Glob(filepath.Join(pinDir, "maps", "*"))
	for _, path := range maps {
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		out = append(out, kernelObject{"map " + filepath.Base(path), func() bool {
			m, err := ebpf.NewMapFromID(id)
			if err == nil {
				m.Close()
			}
			return err == nil
		}})
	}
	links, _ := filepath.Glob(filepath.Join(pinDir, "links", "*", "*"))
	for _, path := range links {
		lk, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := lk.Info()
		lk.Close()
		if err != nil {
			t.Fatal(err)
		}
		lid, pid := info.ID, info.Program
		name := filepath.Base(filepath.Dir(path)) + "/" + filepath.Base(path)
		out = append(out, kernelObject{"link " + name, func() bool {
			l, err := link.NewFromID(lid)
			if err == nil {
				l.Close()
			}
			return err == nil
		}}, kernelObject{"program " + filepath.Base(path), func() bool {
			p, err := ebpf.NewProgramFromID(pid)
			if err == nil {
				p.Close()
			}
			return err == nil
		}})
	}
	return out
}
