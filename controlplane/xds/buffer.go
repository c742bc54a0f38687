package xds

import (
	"sync"
	"sync/atomic"
)

// Response buffers are detour's own rather than gRPC's mem package: the
// pacing of push workers (pace.go) depends on when a buffer is given back,
// and gRPC's reference counting and pooling threshold are its internals.

// poolThreshold: a response of up to 1 KiB is a plain slice, not pooled
// (the threshold of gRPC's mem package, which the codec used).
const poolThreshold = 1 << 10

// tierSizes are the capacities of the pool's buffers: 256 B, 1 KiB, then
// every power of two from 4 KiB to 1 MiB. Larger buffers are kept apart,
// reused when large enough. (gRPC's default pool jumped from 32 KiB to
// 1 MiB: each larger message marshalled into it would take a 1 MiB buffer.)
var tierSizes = [...]int{1 << 8, 1 << 10, 1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20}

// bufferPool holds buffers by size: the responses' (above poolThreshold)
// and the frames and requests the connections read (h2conn.go).
type bufferPool struct {
	tiers [len(tierSizes)]sync.Pool // *[]byte of capacity tierSizes[i]
	large sync.Pool                 // *[]byte larger than the largest tier
	out   atomic.Int64              // buffers taken and not given back
}

// xdsBufferPool holds every connection's buffers.
var xdsBufferPool = &bufferPool{}

// Get returns a buffer of size bytes; its content is whatever it held
// before.
func (p *bufferPool) Get(size int) *[]byte {
	p.out.Add(1)
	for i, c := range tierSizes {
		if size <= c {
			if b, ok := p.tiers[i].Get().(*[]byte); ok {
				*b = (*b)[:size]
				return b
			}
			b := make([]byte, size, c)
			return &b
		}
	}
	if b, ok := p.large.Get().(*[]byte); ok && cap(*b) >= size {
		*b = (*b)[:size]
		return b
	}
	b := make([]byte, size)
	return &b
}

// Put gives back a buffer that Get returned.
func (p *bufferPool) Put(b *[]byte) {
	p.out.Add(-1)
	c := cap(*b)
	if c > tierSizes[len(tierSizes)-1] {
		p.large.Put(b)
		return
	}
	for i := len(tierSizes) - 1; i >= 0; i-- {
		if c >= tierSizes[i] {
			p.tiers[i].Put(b)
			return
		}
	}
}

// response is one marshalled response message. Its bytes are in a buffer
// of pool unless the message is small; release gives the buffer back and
// finishes the push worker's flight, if any (pace.go). Whoever holds the
// response releases it once: the connection's writer once it is written,
// or whoever drops it unwritten.
type response struct {
	data []byte
	buf  *[]byte // data's pooled buffer; nil when not pooled
	pool *bufferPool
	f    *flight // finished by release; nil when nothing waits
}

// newResponse returns a response with room for size bytes: in a buffer of
// pool above poolThreshold, finishing f once released; a plain slice (and
// f finished at once) below.
func newResponse(size int, pool *bufferPool, f *flight) *response {
	if size <= poolThreshold {
		f.finish() // nothing to wait for
		return &response{data: make([]byte, size)}
	}
	buf := pool.Get(size)
	return &response{data: *buf, buf: buf, pool: pool, f: f}
}

// pooled reports whether r's bytes are in a pooled buffer (not yet given
// back).
func (r *response) pooled() bool { return r.buf != nil }

// release gives r's buffer back and finishes its flight. A second release
// does nothing: the first took both.
func (r *response) release() {
	buf, pool, f := r.buf, r.pool, r.f
	r.data, r.buf, r.pool, r.f = nil, nil, nil, nil
	if buf != nil {
		pool.Put(buf)
	}
	f.finish()
}
