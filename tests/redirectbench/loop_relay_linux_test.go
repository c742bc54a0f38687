package redirectbench

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoopRelay checks the bench's relay and echo server (no root: a
// relay to a fixed destination on loopback): every byte of a payload larger
// than the socket buffers comes back in order through relay and echo
// server, the app's half-close reaches the server and the server's close
// the app, the relay counts a refused upstream as a failure and nothing
// else (an SO_ORIGINAL_DST asked in vain on a floor listener neither), and
// the client's connection loop completes connections.
func TestLoopRelay(t *testing.T) {
	loopback := netip.MustParseAddrPort("127.0.0.1:0")
	var serverErrs, relayErrs atomic.Int64
	var serverLast, relayLast atomic.Value
	server, err := startLoops(1, []listenSpec{{addr: loopback, echo: true}}, &serverErrs, &serverLast)
	if err != nil {
		t.Fatal(err)
	}
	// A port nothing listens on: bound and closed again.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	relay, err := startLoops(1, []listenSpec{
		{addr: loopback, fixed: server[0]},
		{addr: loopback, fixed: closed},
		{addr: loopback, echo: true},
		// The floor paths that ask SO_ORIGINAL_DST all the same: nothing
		// redirected these connections, so the kernel has no answer, and
		// they are relayed and answered as without asking.
		{addr: loopback, fixed: server[0], ask: true},
		{addr: loopback, echo: true, ask: true},
	}, &relayErrs, &relayLast)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		to   netip.AddrPort
		size int
	}{
		{"relayed to the echo server", relay[0], 8 << 20},
		{"relayed, nothing sent", relay[0], 0},
		{"answered by the relay", relay[2], 8 << 20},
		{"relayed, asking SO_ORIGINAL_DST in vain", relay[3], 8 << 20},
		{"answered, asking SO_ORIGINAL_DST in vain", relay[4], 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", tt.to.String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			payload := make([]byte, tt.size)
			for i := range payload {
				payload[i] = byte(i * 7 / 3)
			}
			go func() {
				c.Write(payload)
				c.(*net.TCPConn).CloseWrite()
			}()
			// ReadAll returns at EOF: the half-close went through and the
			// close came back.
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("got %d bytes back, want the %d sent, in order", len(got), len(payload))
			}
		})
	}
	if n := relayErrs.Load(); n != 0 {
		t.Errorf("relay failures = %d (%v), want 0", n, relayLast.Load())
	}

	t.Run("upstream refused", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", relay[1].String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("read %d bytes from a connection whose upstream refused, want it closed", n)
		}
		if n := relayErrs.Load(); n != 1 {
			t.Errorf("relay failures = %d, want 1 (the refused upstream)", n)
		}
	})

	t.Run("client connection loop", func(t *testing.T) {
		n, cpu, failed, err := epollConnLoop(relay[0], 4, 2, 200*time.Millisecond)
		if n == 0 || failed != 0 {
			t.Errorf("connections = %d, failed = %d (%v), want some and none", n, failed, err)
		}
		if cpu <= 0 {
			t.Errorf("CPU = %s, want the process's CPU time", cpu)
		}
	})
	if n := serverErrs.Load(); n != 0 {
		t.Errorf("echo server failures = %d (%v), want 0", n, serverLast.Load())
	}
}
