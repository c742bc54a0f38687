package xds

import (
	"encoding/binary"
	"net"
	"slices"
	"sync"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The writing side of a connection (see h2conn.go). Everything queued is
// guarded by h2conn.wmu; a writer goroutine runs while there is something it
// can write, and only it (or, when none runs, whoever drops a queue) gives a
// response's buffer back.

// writeState is a connection's queue and the peer's flow control.
type writeState struct {
	ctrl          []byte      // control frames, written before anything else
	ready         []*h2stream // streams with queued items, in order
	sendWindow    int64       // the peer's connection window
	initialWindow int64       // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	maxFrame      int         // the peer's SETTINGS_MAX_FRAME_SIZE
	tableSize     uint32      // the peer's SETTINGS_HEADER_TABLE_SIZE
	sizeUpdate    bool        // it changed: the next header block starts with tableSizeZero
	aborted       []*h2stream // calls ended by abort, for the reader to forget
	writing       bool        // a writer goroutine runs
	closing       bool        // GOAWAY queued: control frames only, then the write side closes
	dead          bool        // the connection is closed: whatever is queued is dropped
	unsent        int         // bytes of the response messages queued, not yet written
	// capped: the part of unsent that maxUnsent bounds, every response but
	// the first unwritten of each type of each stream (see queueMessage).
	capped int
}

// outItem is one thing a stream has to write, in order.
type outItem struct {
	block []byte  // a HEADERS frame's header block, when msg is nil and rst false
	end   bool    // the HEADERS frame ends the stream (trailers)
	msg   *outMsg // a response message
	rst   bool    // RST_STREAM NO_ERROR after the trailers: the client need not send more
}

// outMsg is a response message: its gRPC prefix and its marshalled bytes,
// framed as DATA as the peer's windows allow.
type outMsg struct {
	resp   *response
	prefix [5]byte
	parts  [][]byte // what is left to frame: prefix, then resp's bytes
	left   int
	// typ is the response's type; exempt: it is its stream's first
	// unwritten response of typ, which maxUnsent does not count.
	typ    string
	exempt bool
	// replace: a SotW response, which a newer response of its type
	// replaces as long as none of it is written.
	replace bool
}

// unqueue takes what is left of m off the connection's counts (wmu held).
func (c *h2conn) unqueue(m *outMsg, n int) {
	c.w.unsent -= n
	if !m.exempt {
		c.w.capped -= n
	}
}

// errStreamEnded is what sending on an ended call returns.
var errStreamEnded = status.Error(codes.Canceled, "stream ended")

// start queues the server's SETTINGS and widens the connection's receive
// window to recvWindow.
func (c *h2conn) start() {
	var b []byte
	b = appendFrameHeader(b, 18, http2.FrameSettings, 0, 0)
	b = appendSetting(b, http2.SettingMaxConcurrentStreams, maxStreams)
	b = appendSetting(b, http2.SettingInitialWindowSize, recvWindow)
	b = appendSetting(b, http2.SettingMaxHeaderListSize, maxHeaderBlock)
	b = appendWindowUpdate(b, 0, recvWindow-defaultWindow)
	c.wmu.Lock()
	c.w.sendWindow, c.w.initialWindow, c.w.maxFrame = defaultWindow, defaultWindow, maxReadFrame
	c.w.tableSize = defaultTableSize
	c.wmu.Unlock()
	c.queueControl(b)
}

// queueControl queues control frames (ahead of any data).
func (c *h2conn) queueControl(frames []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.w.dead || c.w.closing {
		return
	}
	c.addControl(frames)
	c.kick()
}

// addControl appends control frames to the queue (wmu held). Past
// maxQueuedControl unwritten, the peer sends faster than it reads what it
// asks for: the reader ends the connection (see calm).
func (c *h2conn) addControl(frames []byte) {
	c.w.ctrl = append(c.w.ctrl, frames...)
	if len(c.w.ctrl) > maxQueuedControl {
		c.calm.Store(true)
	}
}

func (c *h2conn) queueRST(id uint32, code http2.ErrCode) {
	c.queueControl(appendRSTStream(nil, id, code))
}

// goAway queues GOAWAY; the write side is closed once it is written.
func (c *h2conn) goAway(code http2.ErrCode, reason string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.w.dead || c.w.closing {
		return
	}
	c.w.ctrl = appendGoAway(c.w.ctrl, c.lastID, code, reason)
	c.w.closing = true
	c.kick()
}

// applySettings applies the peer's SETTINGS (initialWindow and tableSize
// < 0, maxFrame 0: unchanged) and acknowledges them. A new header table size
// is signalled at the start of the first header block written after the
// ACK (RFC 7541 §4.2), which this queues under the same lock.
func (c *h2conn) applySettings(initialWindow int64, maxFrame uint32, tableSize int64) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if initialWindow >= 0 {
		delta := initialWindow - c.w.initialWindow
		c.w.initialWindow = initialWindow
		for _, st := range c.streams {
			if st.sendWindow += delta; st.sendWindow > maxWindow {
				return connError{http2.ErrCodeFlowControl, "stream window above 2^31-1"}
			}
		}
		for _, st := range c.w.ready {
			// No longer open, still writing (an aborted stream is open
			// until the reader reaps it: changed above).
			if st.ended && c.stream(st.id) != st {
				st.sendWindow += delta
			}
		}
	}
	if maxFrame != 0 {
		c.w.maxFrame = int(maxFrame)
	}
	if tableSize >= 0 && uint32(tableSize) != c.w.tableSize {
		c.w.tableSize, c.w.sizeUpdate = uint32(tableSize), true
	}
	if !c.w.dead && !c.w.closing {
		c.addControl(appendFrameHeader(nil, 0, http2.FrameSettings, flagAck, 0))
		c.kick()
	}
	return nil
}

// grow widens the peer's window of the connection (st nil) or of st; false
// when it would pass 2^31-1.
func (c *h2conn) grow(st *h2stream, inc uint32) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	w := &c.w.sendWindow
	if st != nil {
		w = &st.sendWindow
	}
	if *w += int64(inc); *w > maxWindow {
		*w = maxWindow
		return false
	}
	c.kick()
	return true
}

// endedStream returns the stream id whose call ended but whose response is
// still being written (its trailers wait behind its data), or nil.
func (c *h2conn) endedStream(id uint32) *h2stream {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, st := range c.w.ready {
		if st.id == id && st.ended {
			return st
		}
	}
	return nil
}

// endedUnwritten counts the streams whose call ended but whose response is
// not written yet, and that c.streams no longer counts (an aborted stream
// stays there until the reader reaps it): for the peer they are still
// open. Called on the reader.
func (c *h2conn) endedUnwritten() int {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n := 0
	for _, st := range c.w.ready {
		if st.ended && c.stream(st.id) != st {
			n++
		}
	}
	return n
}

// newStream sets a new stream's send window.
func (c *h2conn) newStream(st *h2stream) {
	c.wmu.Lock()
	st.sendWindow = c.w.initialWindow
	c.wmu.Unlock()
}

// dead drops whatever is queued: the connection is closed.
func (c *h2conn) dead() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.w.dead = true
	if !c.w.writing {
		c.dropQueued()
	}
}

// dropQueued gives back the buffers of everything queued (wmu held, no
// writer running).
func (c *h2conn) dropQueued() {
	for _, st := range c.w.ready {
		st.drop()
	}
	c.w.ready, c.w.ctrl = nil, nil
}

// drop gives back the buffers of st's queued messages (wmu held, no writer
// running or the writer itself).
func (st *h2stream) drop() {
	for _, it := range st.out {
		if it.msg != nil {
			st.c.unqueue(it.msg, it.msg.left)
			it.msg.resp.release()
		}
	}
	st.out, st.queued = nil, false
}

// dropSends ends st's sending: what it queued is dropped (the peer reset
// it, or its call failed).
func (st *h2stream) dropSends() {
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	st.ended, st.reset = true, true
	if c.w.writing {
		return // the writer drops it, between two writes
	}
	if st.queued {
		st.drop()
		c.w.ready = slices.DeleteFunc(c.w.ready, func(s *h2stream) bool { return s == st })
	}
}

// finish ends st's call with err's status (errCallDone: OK): its trailers
// follow what it queued, then RST_STREAM NO_ERROR if the client has not
// ended its side. Called on the reader.
func (st *h2stream) finish(err error) {
	code, msg := uint32(codes.OK), ""
	if err != nil && err != errCallDone {
		s := status.Convert(err)
		code, msg = uint32(s.Code()), s.Message()
	}
	st.finishHTTP(200, codes.Code(code), msg)
}

// finishHTTP is finish with an HTTP status (a trailers-only response when it
// is not 200).
func (st *h2stream) finishHTTP(httpStatus int, code codes.Code, msg string) {
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if st.ended || c.w.dead {
		st.ended = true
		return
	}
	st.ended = true
	st.out = append(st.out, outItem{block: trailerBlock(st.headersSent, httpStatus, uint32(code), msg), end: true})
	st.headersSent = true
	if !st.remoteDone {
		st.out = append(st.out, outItem{rst: true})
	}
	c.ready(st)
}

// abort ends st's call with err's status from a goroutine other than the
// reader (a push that failed): as finish, except that RST_STREAM NO_ERROR
// follows the trailers even when the client has ended its side, which only
// the reader knows (RFC 9113 §5.1 lets a client receive it shortly after its
// END_STREAM). The reader forgets the stream and closes its call before the
// next frame it handles (reap): at the latest the answer to a keepalive
// ping.
func (st *h2stream) abort(err error) {
	s := status.Convert(err)
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if st.ended || c.w.dead {
		return
	}
	st.ended = true
	st.out = append(st.out, outItem{block: trailerBlock(st.headersSent, 200, uint32(s.Code()), s.Message()), end: true}, outItem{rst: true})
	st.headersSent = true
	c.ready(st)
	c.w.aborted = append(c.w.aborted, st)
	c.aborts.Store(true)
}

// reap forgets the streams whose calls were aborted and closes the calls
// (on the reader, which alone keeps the open streams).
func (c *h2conn) reap() {
	c.wmu.Lock()
	aborted := c.w.aborted
	c.w.aborted = nil
	c.aborts.Store(false)
	c.wmu.Unlock()
	for _, st := range aborted {
		if c.stream(st.id) == st { // not ended by the reader meanwhile
			c.forget(st)
			st.releaseRecv()
			st.call.closed()
		}
	}
}

// queueMessage queues a marshalled response message of type typ ("": of
// no type); replace, for a SotW response, replaces the stream's queued
// response of that type of which nothing is written yet. A stream's first unwritten
// response of a type is one a proxy may rightly leave unread (it answers
// each response before the next of its type is sent): it is exempt. When
// the others, queued behind one of their type, would pass maxUnsent bytes
// unwritten (a single larger one is still queued), the peer is not reading
// them: the connection is closed.
func (st *h2stream) queueMessage(r *response, typ string, replace bool) error {
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if st.ended || c.w.dead {
		r.release()
		return errStreamEnded
	}
	n := len(r.data)
	st.behind = c.w.unsent > 0
	old := st.replaceable(typ, replace)
	exempt := typ != "" && !st.hasType(typ)
	if old != nil {
		exempt = old.msg.exempt
	}
	if !exempt && old == nil && c.w.capped > 0 && c.w.capped+5+n > c.t.maxUnsent {
		r.release()
		c.t.log.Warn("closing connection", "peer", c.peer, "error", "responses unread", "bytes", c.w.unsent, "counted", c.w.capped, "limit", c.t.maxUnsent)
		c.w.dead = true
		if !c.w.writing {
			c.dropQueued()
		}
		c.raw.Close() // the reader ends the calls
		return status.Errorf(codes.ResourceExhausted, "more than %d bytes of responses unread by the peer", c.t.maxUnsent)
	}
	if !st.headersSent {
		st.headersSent = true
		st.out = append(st.out, outItem{block: responseHeaders})
	}
	m := &outMsg{resp: r, typ: typ, exempt: exempt, replace: replace}
	m.prefix[0] = 0
	binary.BigEndian.PutUint32(m.prefix[1:], uint32(n))
	m.parts = [][]byte{m.prefix[:], r.data}
	m.left = 5 + n
	c.w.unsent += m.left
	if !exempt {
		c.w.capped += m.left
	}
	if old != nil {
		c.unqueue(old.msg, old.msg.left)
		old.msg.resp.release()
		old.msg = m
		return nil // st is queued already
	}
	st.out = append(st.out, outItem{msg: m})
	c.ready(st)
	return nil
}

// hasType reports whether st has a response of type typ queued (wmu held).
func (st *h2stream) hasType(typ string) bool {
	for i := range st.out {
		if m := st.out[i].msg; m != nil && m.typ == typ {
			return true
		}
	}
	return false
}

// promote exempts st's next queued response of m's type, now its first
// unwritten one, once m is written (wmu held).
func (c *h2conn) promote(st *h2stream, m *outMsg) {
	if m.typ == "" {
		return
	}
	for i := range st.out {
		if next := st.out[i].msg; next != nil && next != m && next.typ == m.typ {
			if !next.exempt {
				next.exempt = true
				c.w.capped -= next.left
			}
			return
		}
	}
}

// replaceable returns, for a response that replaces (replace), st's queued
// response of type typ of which nothing is written yet, or nil (wmu held).
func (st *h2stream) replaceable(typ string, replace bool) *outItem {
	if !replace || typ == "" {
		return nil
	}
	for i := range st.out {
		if m := st.out[i].msg; m != nil && m.replace && m.typ == typ && m.left == 5+len(m.resp.data) {
			return &st.out[i]
		}
	}
	return nil
}

// ready puts st in the writer's list and starts the writer (wmu held).
func (c *h2conn) ready(st *h2stream) {
	if !st.queued {
		st.queued = true
		c.w.ready = append(c.w.ready, st)
	}
	c.kick()
}

// kick starts a writer when none runs and there is something to write
// (wmu held).
func (c *h2conn) kick() {
	if c.w.writing || c.w.dead || !c.writable() {
		return
	}
	c.w.writing = true
	go c.write()
}

// writable reports whether the writer has something it can write now.
func (c *h2conn) writable() bool {
	if len(c.w.ctrl) > 0 {
		return true
	}
	if c.w.closing {
		return false
	}
	for _, st := range c.w.ready {
		if c.sendable(st) {
			return true
		}
	}
	return false
}

// sendable reports whether st's next item can be written now.
func (c *h2conn) sendable(st *h2stream) bool {
	if len(st.out) == 0 {
		return false
	}
	if st.out[0].msg == nil {
		return true
	}
	return c.w.sendWindow > 0 && st.sendWindow > 0
}

const (
	// maxBatchFrames and maxBatchBytes bound one write.
	maxBatchFrames = 64
	maxBatchBytes  = 256 << 10
	rstFrameLen    = frameHeaderLen + 4
)

// batch is one write: control frames, then frame headers and slices of the
// responses' buffers.
type batch struct {
	hdrs    []byte // frame headers (capacity for maxBatchFrames: never reallocated)
	bufs    net.Buffers
	free    []*response // written once bufs are
	frames  int
	size    int
	data    bool // HEADERS or DATA of a response
	closing bool
	flat    []byte // for a connection without writev (TLS): bufs copied
}

var batches = sync.Pool{New: func() any { return &batch{hdrs: make([]byte, 0, maxBatchFrames*rstFrameLen)} }}

func (b *batch) add(p []byte) {
	b.bufs = append(b.bufs, p)
	b.size += len(p)
}

func (b *batch) frame(length int, t http2.FrameType, flags uint8, id uint32) {
	h := len(b.hdrs)
	b.hdrs = appendFrameHeader(b.hdrs, length, t, flags, id)
	b.add(b.hdrs[h:])
	b.frames++
}

func (b *batch) full() bool { return b.frames >= maxBatchFrames || b.size >= maxBatchBytes }

func (b *batch) reset() {
	clear(b.bufs[:cap(b.bufs)])
	clear(b.free)
	b.hdrs, b.bufs, b.free = b.hdrs[:0], b.bufs[:0], b.free[:0]
	b.frames, b.size, b.data, b.closing = 0, 0, false, false
}

// write is the connection's writer: it writes until nothing is left that
// it can write.
func (c *h2conn) write() {
	b := batches.Get().(*batch)
	defer batches.Put(b)
	bufs := b.bufs
	for {
		b.reset()
		c.wmu.Lock()
		if c.w.dead {
			c.dropQueued()
			c.w.writing = false
			c.wmu.Unlock()
			return
		}
		c.plan(b)
		if len(b.bufs) == 0 {
			c.w.writing = false
			c.wmu.Unlock()
			return
		}
		c.wmu.Unlock()
		bufs = b.bufs
		err := c.flush(b)
		b.bufs = bufs // WriteTo consumed its copy
		for _, r := range b.free {
			r.release()
		}
		if b.data {
			c.dataSent.Store(true)
		}
		if err == nil && b.closing {
			if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
				err = cw.CloseWrite()
			}
		}
		if err != nil {
			c.raw.Close() // the reader ends the calls
			c.wmu.Lock()
			c.w.dead = true
			c.wmu.Unlock()
		}
	}
}

// flush writes a batch: with writev, or copied into one buffer for a
// connection that would write each piece on its own (a TLS record each).
func (c *h2conn) flush(b *batch) error {
	if c.nc == c.raw {
		_, err := b.bufs.WriteTo(c.nc)
		return err
	}
	flat := b.flat[:0]
	for _, p := range b.bufs {
		flat = append(flat, p...)
	}
	_, err := c.nc.Write(flat)
	b.flat = flat[:0]
	return err
}

// plan fills b with what can be written now (wmu held).
func (c *h2conn) plan(b *batch) {
	if len(c.w.ctrl) > 0 {
		b.add(c.w.ctrl)
		c.w.ctrl = nil
	}
	if c.w.closing {
		b.closing = true
		return
	}
	ready := c.w.ready
	for i := 0; i < len(ready) && !b.full(); {
		st := ready[i]
		if st.reset {
			st.drop()
		} else {
			c.planStream(b, st)
		}
		if len(st.out) == 0 {
			st.queued = false
			ready = slices.Delete(ready, i, i+1)
			continue
		}
		i++
	}
	if len(ready) == 0 {
		ready = nil
	}
	c.w.ready = ready
}

// planStream adds st's items to b as far as windows and b allow.
func (c *h2conn) planStream(b *batch, st *h2stream) {
	for len(st.out) > 0 && !b.full() {
		it := &st.out[0]
		switch {
		case it.rst:
			h := len(b.hdrs)
			b.hdrs = appendRSTStream(b.hdrs, st.id, http2.ErrCodeNo)
			b.add(b.hdrs[h:])
			b.frames++
		case it.msg == nil:
			flags := uint8(flagEndHeaders)
			if it.end {
				flags |= flagEndStream
			}
			if c.w.sizeUpdate {
				c.w.sizeUpdate = false
				b.frame(len(tableSizeZero)+len(it.block), http2.FrameHeaders, flags, st.id)
				b.add(tableSizeZero)
			} else {
				b.frame(len(it.block), http2.FrameHeaders, flags, st.id)
			}
			b.add(it.block)
			b.data = true
		default:
			m := it.msg
			n := min(int64(m.left), c.w.sendWindow, st.sendWindow, int64(c.w.maxFrame))
			if n <= 0 {
				return // blocked until the peer's WINDOW_UPDATE
			}
			b.frame(int(n), http2.FrameData, 0, st.id)
			c.w.sendWindow -= n
			st.sendWindow -= n
			m.left -= int(n)
			c.unqueue(m, int(n))
			for k := int(n); k > 0; {
				p := m.parts[0]
				if len(p) <= k {
					b.add(p)
					k -= len(p)
					m.parts[0] = nil
					m.parts = m.parts[1:]
					continue
				}
				b.add(p[:k])
				m.parts[0] = p[k:]
				k = 0
			}
			b.data = true
			if m.left > 0 {
				continue
			}
			b.free = append(b.free, m.resp)
			c.promote(st, m)
		}
		st.out[0] = outItem{}
		st.out = st.out[1:]
	}
	if len(st.out) == 0 {
		st.out = nil
	}
}
