package bpf

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"slices"
	"testing"
	"time"
)

// TestSpliceRelayReceivesEveryByte: with the default (no sk_msg socket
// acceleration), a proxy that relays with io.Copy between two TCP sockets —
// splice(2) underneath — passes every byte of a redirected connection, both
// ways; also while another scope on the machine has acceleration on (the
// sk_msg program is attached then, and must leave this scope alone).
func TestSpliceRelayReceivesEveryByte(t *testing.T) {
	for _, beside := range []bool{false, true} {
		name := "alone"
		if beside {
			name = "beside an accelerated scope"
		}
		t.Run(name, func(t *testing.T) { spliceRelay(t, beside) })
	}
}

func spliceRelay(t *testing.T, besideAccelerated bool) {
	l := newLab(t)
	enter(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	scope := Scope{Cgroup: l.cgroup}
	if besideAccelerated {
		other := l.cgroup + "-accel"
		if err := os.Mkdir(other, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(other) })
		acc := Scope{Cgroup: other}
		if _, err := ld.ApplyWith(acc, testCapture(t, nil), Settings{Accelerate: true}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ld.Remove(acc) })
	}
	if _, err := ld.Apply(scope, testCapture(t, nil)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ld.Remove(scope) })
	if besideAccelerated {
		st, err := ld.Observe()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(st.Links[accelDir], accelProg) {
			t.Fatalf("links %v: the other scope's sk_msg program is not attached", st.Links)
		}
	}

	var upstream, relay net.Listener
	inNS(t, l.ns, func() (err error) {
		if upstream, err = net.Listen("tcp", "127.0.0.1:9000"); err != nil {
			return err
		}
		relay, err = net.Listen("tcp", "127.0.0.1:15001")
		return err
	})
	defer upstream.Close()
	defer relay.Close()
	go serveEcho(upstream)
	relayed := make(chan int64, 1)
	go func() {
		c, err := relay.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// The upstream is on loopback, which is never captured; the socket
		// is made in the namespace like a sidecar's.
		var up net.Conn
		if err := doNS(l.ns.Path, func() (err error) { up, err = net.Dial("tcp", "127.0.0.1:9000"); return err }); err != nil {
			return
		}
		defer up.Close()
		done := make(chan int64)
		go func() {
			n, _ := io.Copy(up, c) // *net.TCPConn to *net.TCPConn: splice
			up.(*net.TCPConn).CloseWrite()
			done <- n
		}()
		io.Copy(c, up)
		relayed <- <-done
	}()

	const size = 16 << 20
	payload := make([]byte, size)
	rand.Read(payload)
	var c net.Conn
	inNS(t, l.ns, func() (err error) { c, err = net.DialTimeout("tcp", "198.51.100.7:443", 2*time.Second); return err })
	defer c.Close()
	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if n := <-relayed; n != size {
		t.Errorf("the relay received %d of %d bytes", n, size)
	}
	if len(got) != size || !bytes.Equal(sha(got), sha(payload)) {
		t.Errorf("the app got %d bytes back (sha256 %x), want %d (sha256 %x)", len(got), sha(got), size, sha(payload))
	}
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
			c.Close()
		}()
	}
}

func sha(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
