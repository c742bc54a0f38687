//go:build linux

package tests

import (
	"bytes"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/origdst"
	"github.com/detour-mesh/detour/internal/privtest"
)

// TestEBPFAccelerate runs socket acceleration through the CLI
// (`install --backend ebpf --ebpf-accelerate`, network-namespace scope),
// IPv4 and IPv6: an app's connection to a remote echo server goes through a
// relay proxy that reads and writes (as Envoy does, no splice) and dials the
// original destination; every byte of 1 MiB comes back, the app's TCP socket
// itself sent less than half of it (the bytes went socket to socket),
// `status` shows acceleration, and uninstall leaves no pin.
func TestEBPFAccelerate(t *testing.T) {
	privtest.Require(t, "ip", "setpriv", "nft")
	for _, f := range lab.Families {
		t.Run(string(f), func(t *testing.T) {
			p := newPod(t, variant{family: f, backend: ebpfBackend, mode: "redirect"})
			port := p.rnd.Port()
			serveEcho(t, p.lab.Remote, netip.AddrPortFrom(f.Unspecified(), port))
			echo := netip.AddrPortFrom(p.remoteAddr(), port)
			relayed := relayProxy(t, p)

			if r := p.detour(p.withFlags("install", "--inbound=false", "--ebpf-accelerate")...); r.code != 0 {
				t.Fatalf("install --ebpf-accelerate:\n%s", r)
			}
			r := p.detour("status")
			if r.code != 0 || !strings.Contains(r.stdout, "accelerate") || !strings.Contains(r.stdout, "program accel attach sk_msg") {
				t.Errorf("status: want exit 0, the sk_msg program and accelerate in the config flags:\n%s", r)
			}

			const size = 1 << 20
			payload := make([]byte, size)
			crand.Read(payload)
			var c net.Conn
			if err := p.lab.Pod.Do(p.appCred(), func() (err error) {
				c, err = net.DialTimeout(f.TCP(), echo.String(), 3*time.Second)
				return err
			}); err != nil {
				t.Fatalf("dial %s: %v", echo, err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			// One round trip first: both ends are established (and so in
			// the sockhash) before the payload.
			hello := []byte("hello\n")
			if _, err := c.Write(hello); err != nil {
				t.Fatal(err)
			}
			if got := make([]byte, len(hello)); !readFull(t, c, got) || !bytes.Equal(got, hello) {
				t.Fatalf("the first round trip through the relay returned %q, want %q", got, hello)
			}
			go func() {
				c.Write(payload)
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read the echo: %v (after %d bytes)", err, len(got))
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("the app got %d bytes back, want the %d it sent, unchanged", len(got), size)
			}
			if n := <-relayed; n != int64(size+len(hello)) {
				t.Errorf("the relay received %d bytes from the app, want %d", n, size+len(hello))
			}
			if sent := tcpBytesSent(t, c); sent > size/2 {
				t.Errorf("the app's TCP socket sent %d bytes itself: the payload was not accelerated", sent)
			}
			c.Close()

			for range 2 {
				if r := p.detour("uninstall"); r.code != 0 {
					t.Fatalf("uninstall:\n%s", r)
				}
			}
			if left := pinsLeft(t, p.env); len(left) > 0 {
				t.Errorf("after uninstall, BPF pins of detour remain: %q", left)
			}
			if r := p.detour("status"); r.code != 0 || !strings.Contains(r.stdout, "not installed") {
				t.Errorf("status after uninstall: want exit 0, not installed:\n%s", r)
			}
		})
	}
}

// relayProxy is the pod's outbound proxy: it accepts one connection on the
// outbound port, recovers the original destination, dials it as the proxy's
// uid and relays both ways with read(2)/write(2). It reports the bytes it
// received from the app (-1 when it could not relay).
func relayProxy(t *testing.T, p *pod) <-chan int64 {
	t.Helper()
	var ln net.Listener
	addr := netip.AddrPortFrom(p.v.family.Unspecified(), p.outPort)
	if err := p.lab.Pod.Do(nil, func() (err error) { ln, err = net.Listen(p.v.family.TCP(), addr.String()); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	relayed := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			relayed <- -1
			return
		}
		defer c.Close()
		to, err := origdst.Get(c.(*net.TCPConn))
		if err != nil {
			t.Errorf("relay: SO_ORIGINAL_DST: %v", err)
			relayed <- -1
			return
		}
		var up net.Conn
		if err := p.lab.Pod.Do(p.proxyCred(), func() (err error) {
			up, err = net.DialTimeout(p.v.family.TCP(), to.String(), 3*time.Second)
			return err
		}); err != nil {
			t.Errorf("relay: dial %s: %v", to, err)
			relayed <- -1
			return
		}
		defer up.Close()
		done := make(chan int64, 1)
		go func() {
			n := copyRW(up, c)
			up.(*net.TCPConn).CloseWrite()
			done <- n
		}()
		copyRW(c, up)
		c.(*net.TCPConn).CloseWrite()
		relayed <- <-done
	}()
	return relayed
}

// serveEcho echoes every connection to addr in n (a wildcard takes every
// address of its family) with read/write.
func serveEcho(t *testing.T, n *lab.NetNS, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(nil, func() (err error) { ln, err = net.Listen(lab.Of(addr.Addr()).TCP(), addr.String()); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go lab.AcceptEach(ln, lab.Echo)
}

// copyRW copies src to dst with a read/write loop (never splice(2): the
// wrappers hide ReadFrom and WriteTo) and returns the bytes copied.
func copyRW(dst, src net.Conn) int64 {
	n, _ := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 64<<10))
	return n
}

// readFull reads len(b) bytes, reporting a failure.
func readFull(t *testing.T, c net.Conn, b []byte) bool {
	t.Helper()
	if _, err := io.ReadFull(c, b); err != nil {
		t.Errorf("read: %v", err)
		return false
	}
	return true
}

// tcpBytesSent is TCP_INFO's tcpi_bytes_sent of c: what its TCP stack sent.
func tcpBytesSent(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var serr error
	if err := raw.Control(func(fd uintptr) { info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || serr != nil {
		t.Fatal(fmt.Errorf("TCP_INFO: %w", errors.Join(err, serr)))
	}
	return info.Bytes_sent
}
