package xds

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// TestBufferPoolTiers: a buffer has the length asked for, in the smallest
// tier that holds it (256 B, 1 KiB, then powers of two to 1 MiB); larger
// ones are as large as asked. A buffer given back is taken again.
func TestBufferPoolTiers(t *testing.T) {
	t.Parallel()
	var p bufferPool
	for _, tt := range []struct{ size, cap int }{
		{0, 256}, {1, 256}, {256, 256}, {257, 1 << 10}, {1 << 10, 1 << 10}, {1<<10 + 1, 4 << 10},
		{4 << 10, 4 << 10}, {4<<10 + 1, 8 << 10}, {66 << 10, 128 << 10}, {1 << 20, 1 << 20}, {1<<20 + 1, 1<<20 + 1},
	} {
		b := p.Get(tt.size)
		if len(*b) != tt.size || cap(*b) != tt.cap {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", tt.size, len(*b), cap(*b), tt.size, tt.cap)
		}
		p.Put(b)
	}
	if n := p.out.Load(); n != 0 {
		t.Errorf("%d buffers out after all were given back", n)
	}
	// sync.Pool may drop what it is given (the race detector drops some on
	// purpose): some of a hundred tries reuse the buffer.
	for _, size := range []int{3 << 10, 2 << 20} {
		reused := false
		for i := 0; i < 100 && !reused; i++ {
			b := p.Get(size)
			p.Put(b)
			reused = p.Get(size-1) == b
		}
		if !reused {
			t.Errorf("a buffer of %d bytes given back was never taken again", size)
		}
	}
}

// finished reports whether f is done.
func finished(f *flight) bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// TestResponseReleasedOnce: a response above poolThreshold is pooled and
// finishes its flight once released, not before; releasing it again gives
// nothing back twice. One of up to 1 KiB is not pooled, its flight finished
// at once.
func TestResponseReleasedOnce(t *testing.T) {
	t.Parallel()
	var p bufferPool
	f := &flight{done: make(chan struct{})}
	r := newResponse(poolThreshold+1, &p, f)
	if !r.pooled() || len(r.data) != poolThreshold+1 || p.out.Load() != 1 {
		t.Fatalf("response of %d bytes: pooled %v, %d bytes, %d buffers out; want pooled, 1 out", poolThreshold+1, r.pooled(), len(r.data), p.out.Load())
	}
	if finished(f) {
		t.Fatal("flight finished before the response was released")
	}
	r.release()
	if !finished(f) || p.out.Load() != 0 {
		t.Fatalf("after release: flight finished %v, %d buffers out; want finished, 0", finished(f), p.out.Load())
	}
	r.release()
	if n := p.out.Load(); n != 0 {
		t.Fatalf("after a second release: %d buffers out, want 0 (given back twice)", n)
	}

	small := &flight{done: make(chan struct{})}
	r = newResponse(poolThreshold, &p, small)
	if r.pooled() || p.out.Load() != 0 || !finished(small) {
		t.Fatalf("response of %d bytes: pooled %v, %d buffers out, flight finished %v; want not pooled, 0, finished", poolThreshold, r.pooled(), p.out.Load(), finished(small))
	}
	r.release()
	r.release()
	if n := p.out.Load(); n != 0 {
		t.Fatalf("%d buffers out after releasing a plain response", n)
	}
}

// TestResponseWrittenOrDropped: the connection's writer releases a queued
// response once it is written; one that cannot be written (the stream was
// reset, the connection closed, the call had ended) is released as well —
// its flight finishes either way and the buffer goes back once.
func TestResponseWrittenOrDropped(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		size int
		end  func(st *h2stream) // after queueing; nil: written
		pre  bool               // the call ended before queueing
	}{
		{name: "written", size: 2 << 10},
		{name: "stream-reset", size: 200 << 10, end: func(st *h2stream) { st.dropSends() }},
		{name: "connection-closed", size: 200 << 10, end: func(st *h2stream) { st.c.raw.Close(); st.c.dead() }},
		{name: "call-ended", size: 2 << 10, pre: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, peer := net.Pipe()
			defer peer.Close()
			defer srv.Close()
			go func() { _, _ = io.Copy(io.Discard, peer) }()
			tr := newTransport(slog.New(slog.DiscardHandler), nil, newXDSCodec(nil), nil)
			c := &h2conn{t: tr, raw: srv, nc: srv, peer: "pipe"}
			c.start()
			st := &h2stream{c: c, id: 1}
			c.newStream(st)
			if tt.pre {
				st.dropSends()
			}
			var p bufferPool
			f := &flight{done: make(chan struct{})}
			err := st.queueMessage(newResponse(tt.size, &p, f), "", false)
			if tt.pre != (err != nil) {
				t.Fatalf("queueMessage: %v", err)
			}
			if tt.end != nil {
				// The stream's window (64 KiB) holds back the rest.
				if waitIdle(c); finished(f) {
					t.Fatal("flight finished while the response waits for the window")
				}
				tt.end(st)
			}
			select {
			case <-f.done:
			case <-time.After(10 * time.Second):
				t.Fatal("flight not finished")
			}
			if n := p.out.Load(); n != 0 {
				t.Errorf("%d buffers out, want 0", n)
			}
		})
	}
}

// waitIdle waits until c's writer has written what it can.
func waitIdle(c *h2conn) {
	for {
		c.wmu.Lock()
		writing := c.w.writing
		c.wmu.Unlock()
		if !writing {
			return
		}
		time.Sleep(time.Millisecond)
	}
}
