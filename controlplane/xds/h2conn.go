package xds

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// A connection's reading side: frames, header blocks, request messages, the
// peer's flow control and settings (the writing side is h2write.go).

// h2conn is one client connection.
type h2conn struct {
	t    *transport
	raw  net.Conn // as accepted: closing it ends the connection at once
	nc   net.Conn // raw, or the TLS connection over it
	peer string
	// chains are the client certificate's verified chains (mTLS).
	chains [][]*x509.Certificate

	// The reader's.
	hdr         [frameHeaderLen]byte
	dec         *hpack.Decoder
	streams     []*h2stream // open, in id order
	lastID      uint32      // the highest stream id the client opened
	recvWindow  int32       // the connection's receive window left
	recvUnacked int32       // consumed, not yet given back
	block       *headerBlock
	pingStrikes int
	lastPing    time.Time
	partial     int // bytes of the request messages being reassembled

	// The sweeper's (under t.mu).
	started   atomic.Bool // the handshake and preface are done: keepalive applies
	read      atomic.Bool // set by the reader on each frame
	idleSince time.Time
	pingedAt  time.Time // zero: no keepalive ping unanswered

	// calm is set when more than maxQueuedControl bytes of control frames
	// wait unwritten: the reader ends the connection with ENHANCE_YOUR_CALM.
	calm atomic.Bool

	// dataSent is set when the writer writes a response's HEADERS or DATA:
	// pings after it do not count as a flood.
	dataSent atomic.Bool
	// aborts is set while calls ended by abort wait for the reader (reap).
	aborts atomic.Bool

	wmu sync.Mutex // guards the writer's state (h2write.go)
	w   writeState
}

// headerBlock is a request's header block being read (HEADERS, then
// CONTINUATION frames until END_HEADERS).
type headerBlock struct {
	stream    uint32
	endStream bool
	trailers  bool // of an open stream: the client's trailers
	method    string
	path      string
	ctype     string
	bad       bool  // a pseudo-header after a regular one, or unknown
	regular   bool  // a regular header was seen
	pseudo    uint8 // the pseudo-headers seen (bits: :method, :path, :scheme, :authority)
	size      int   // bytes of the block read so far
}

// h2stream is one call on a connection.
type h2stream struct {
	c    *h2conn
	id   uint32
	call call

	// The reader's.
	recvWindow  int32
	recvUnacked int32
	remoteDone  bool // the client sent END_STREAM
	prefix      [5]byte
	prefixN     int
	msg         *[]byte // pooled: the message being reassembled, when it spans frames
	msgLen      int     // its length

	// Guarded by c.wmu (h2write.go).
	sendWindow  int64
	headersSent bool
	ended       bool // trailers or RST_STREAM queued: nothing more is sent
	reset       bool // what it queued is dropped, not written
	out         []outItem
	queued      bool // in c.w.ready
	// behind: when the last message was queued, the connection had
	// responses still unwritten (see ads.go's flush).
	behind bool
}

// serve runs the connection: TLS handshake, then frames until it ends.
func (c *h2conn) serve() {
	defer c.close()
	if c.t.tls != nil {
		tc := tls.Server(c.raw, c.t.tls)
		_ = tc.SetDeadline(time.Now().Add(handshakeTimeout))
		if err := tc.Handshake(); err != nil {
			c.t.log.Debug("tls handshake failed", "peer", c.peer, "error", err)
			return
		}
		_ = tc.SetDeadline(time.Time{})
		c.nc = tc
		c.chains = tc.ConnectionState().VerifiedChains
	}
	var preface [len(http2.ClientPreface)]byte
	_ = c.nc.SetReadDeadline(time.Now().Add(handshakeTimeout))
	if _, err := io.ReadFull(c.nc, preface[:]); err != nil || string(preface[:]) != http2.ClientPreface {
		return
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	c.dec = hpack.NewDecoder(4096, c.headerField)
	c.dec.SetMaxStringLength(maxReadFrame)
	c.recvWindow = recvWindow
	c.start()
	c.started.Store(true)
	err := c.readFrames()
	var ce connError
	if errors.As(err, &ce) {
		c.t.log.Debug("closing connection", "peer", c.peer, "error", err)
		c.goAway(ce.code, ce.reason)
		// Drain what the peer still sends for a while, so that it reads the
		// GOAWAY rather than a reset.
		_ = c.nc.SetReadDeadline(time.Now().Add(goAwayLinger))
		_, _ = io.Copy(io.Discard, c.nc)
	}
}

// close ends every call of the connection and forgets it.
func (c *h2conn) close() {
	c.raw.Close()
	c.t.mu.Lock()
	delete(c.t.conns, c)
	c.t.mu.Unlock()
	c.dead()
	for _, st := range c.streams {
		st.releaseRecv()
		st.call.closed()
	}
	c.streams = nil
}

// readFrames reads and handles frames until the connection fails or ends.
func (c *h2conn) readFrames() error {
	for first := true; ; first = false {
		if _, err := io.ReadFull(c.nc, c.hdr[:]); err != nil {
			return err
		}
		c.read.Store(true)
		if c.aborts.Load() {
			c.reap()
		}
		length := int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
		typ, flags := http2.FrameType(c.hdr[3]), c.hdr[4]
		id := binary.BigEndian.Uint32(c.hdr[5:]) & 0x7fffffff
		if length > maxReadFrame {
			return connError{http2.ErrCodeFrameSize, fmt.Sprintf("frame of %d bytes, max %d", length, maxReadFrame)}
		}
		if first && (typ != http2.FrameSettings || flags&flagAck != 0) {
			return connError{http2.ErrCodeProtocol, "client preface without SETTINGS"}
		}
		if c.block != nil && (typ != http2.FrameContinuation || id != c.block.stream) {
			return connError{http2.ErrCodeProtocol, "expected CONTINUATION of stream " + fmt.Sprint(c.block.stream)}
		}
		buf := xdsBufferPool.Get(length)
		p := (*buf)[:length]
		_, err := io.ReadFull(c.nc, p)
		if err == nil {
			err = c.frame(typ, flags, id, p)
		}
		if err == nil && c.calm.Load() {
			err = connError{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf("more than %d bytes of control frames unread by the peer", maxQueuedControl)}
		}
		xdsBufferPool.Put(buf)
		if err != nil {
			return err
		}
	}
}

// frame handles one frame.
func (c *h2conn) frame(typ http2.FrameType, flags uint8, id uint32, p []byte) error {
	switch typ {
	case http2.FrameData:
		return c.data(flags, id, p)
	case http2.FrameHeaders:
		return c.headers(flags, id, p)
	case http2.FrameContinuation:
		if c.block == nil {
			return connError{http2.ErrCodeProtocol, "CONTINUATION without HEADERS"}
		}
		return c.headerFragment(flags, p)
	case http2.FramePriority:
		if id == 0 {
			return connError{http2.ErrCodeProtocol, "PRIORITY on stream 0"}
		}
		if len(p) != 5 {
			return connError{http2.ErrCodeFrameSize, "PRIORITY of " + fmt.Sprint(len(p)) + " bytes"}
		}
		return nil
	case http2.FrameRSTStream:
		return c.rstStream(id, p)
	case http2.FrameSettings:
		return c.settings(flags, id, p)
	case http2.FramePushPromise:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE from a client"}
	case http2.FramePing:
		return c.ping(flags, id, p)
	case http2.FrameGoAway:
		if id != 0 {
			return connError{http2.ErrCodeProtocol, "GOAWAY on a stream"}
		}
		return nil
	case http2.FrameWindowUpdate:
		return c.windowUpdate(id, p)
	}
	return nil // unknown frame types are ignored
}

// stream returns the open stream id, or nil.
func (c *h2conn) stream(id uint32) *h2stream {
	i, ok := slices.BinarySearchFunc(c.streams, id, func(st *h2stream, id uint32) int { return int(st.id) - int(id) })
	if !ok {
		return nil
	}
	return c.streams[i]
}

// forget removes st from the open streams.
func (c *h2conn) forget(st *h2stream) {
	if i := slices.Index(c.streams, st); i >= 0 {
		c.streams = slices.Delete(c.streams, i, i+1)
	}
	if len(c.streams) == 0 {
		c.streams = nil
	}
}

// unpad strips a frame's padding.
func unpad(flags uint8, p []byte) ([]byte, error) {
	if flags&flagPadded == 0 {
		return p, nil
	}
	if len(p) == 0 || int(p[0]) >= len(p) {
		return nil, connError{http2.ErrCodeProtocol, "padding longer than the frame"}
	}
	return p[1 : len(p)-int(p[0])], nil
}

func (c *h2conn) headers(flags uint8, id uint32, p []byte) error {
	if id == 0 || id%2 == 0 {
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("HEADERS on stream %d", id)}
	}
	p, err := unpad(flags, p)
	if err != nil {
		return err
	}
	if flags&flagPriority != 0 {
		if len(p) < 5 {
			return connError{http2.ErrCodeFrameSize, "HEADERS too short for its priority"}
		}
		p = p[5:]
	}
	b := &headerBlock{stream: id, endStream: flags&flagEndStream != 0}
	if id <= c.lastID {
		st := c.stream(id)
		if st == nil || st.remoteDone {
			return connError{http2.ErrCodeStreamClosed, fmt.Sprintf("HEADERS on closed stream %d", id)}
		}
		if !b.endStream {
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("trailers without END_STREAM on stream %d", id)}
		}
		b.trailers = true
	} else {
		c.lastID = id
	}
	c.block = b
	return c.headerFragment(flags, p)
}

func (c *h2conn) headerFragment(flags uint8, p []byte) error {
	if c.block.size += len(p); c.block.size > maxHeaderBlock {
		return connError{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf("header block of stream %d larger than %d bytes", c.block.stream, maxHeaderBlock)}
	}
	if _, err := c.dec.Write(p); err != nil {
		return connError{http2.ErrCodeCompression, err.Error()}
	}
	if flags&flagEndHeaders == 0 {
		return nil
	}
	if err := c.dec.Close(); err != nil {
		return connError{http2.ErrCodeCompression, err.Error()}
	}
	b := c.block
	c.block = nil
	if b.trailers {
		return c.endOfRequest(c.stream(b.stream))
	}
	return c.open(b)
}

// headerField is the HPACK decoder's emit function.
// A request is malformed (RFC 9113 §8.2, §8.3) — the stream is reset with
// PROTOCOL_ERROR — when a name has upper-case letters, a pseudo-header is
// unknown, repeated, or follows a regular field, or a field is specific to
// HTTP/1 connections.
func (c *h2conn) headerField(f hpack.HeaderField) {
	b := c.block
	if strings.ContainsFunc(f.Name, func(r rune) bool { return 'A' <= r && r <= 'Z' }) {
		b.bad = true
		return
	}
	if !f.IsPseudo() {
		b.regular = true
		switch f.Name {
		case "content-type":
			b.ctype = f.Value
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			b.bad = true
		case "te":
			b.bad = b.bad || f.Value != "trailers"
		}
		return
	}
	if b.regular || b.trailers {
		b.bad = true
		return
	}
	var seen uint8
	switch f.Name {
	case ":method":
		seen, b.method = 1, f.Value
	case ":path":
		seen, b.path = 2, f.Value
	case ":scheme":
		seen = 4
	case ":authority":
		seen = 8
	default:
		b.bad = true
	}
	if b.pseudo&seen != 0 {
		b.bad = true
	}
	b.pseudo |= seen
}

// open starts the call of a request's headers.
func (c *h2conn) open(b *headerBlock) error {
	if b.bad || b.method != "POST" || b.path == "" {
		c.queueRST(b.stream, http2.ErrCodeProtocol)
		return nil
	}
	// A call ended but not yet written is still open for the peer, which
	// counts it against SETTINGS_MAX_CONCURRENT_STREAMS until it reads its
	// trailers: a peer that does not read cannot have more queued.
	if len(c.streams)+c.endedUnwritten() >= maxStreams {
		c.queueRST(b.stream, http2.ErrCodeRefusedStream)
		return nil
	}
	st := &h2stream{c: c, id: b.stream, recvWindow: recvWindow, remoteDone: b.endStream}
	c.newStream(st)
	if ct := b.ctype; ct != "application/grpc" && !strings.HasPrefix(ct, "application/grpc+") && !strings.HasPrefix(ct, "application/grpc;") {
		st.finishHTTP(415, codes.Internal, fmt.Sprintf("invalid gRPC request content-type %q", ct))
		return nil
	}
	m, ok := c.t.methods[b.path]
	if !ok {
		st.finish(status.Errorf(codes.Unimplemented, "unknown method %s", b.path))
		return nil
	}
	cl, err := m(st)
	if err != nil {
		st.finish(err)
		return nil
	}
	st.call = cl
	c.streams = append(c.streams, st) // ids only grow: still in order
	if b.endStream {
		return c.endOfRequest(st)
	}
	return nil
}

// endOfRequest: the client ended st (END_STREAM).
func (c *h2conn) endOfRequest(st *h2stream) error {
	if st == nil {
		return nil
	}
	st.remoteDone = true
	if st.msg != nil || st.prefixN > 0 {
		c.end(st, status.Error(codes.Internal, "the request ended inside a message"))
		return nil
	}
	if err := st.call.halfClose(); err != nil {
		c.end(st, err)
	}
	return nil
}

// end finishes st's call with err's status (errCallDone: OK) and forgets it.
func (c *h2conn) end(st *h2stream, err error) {
	st.finish(err)
	c.forget(st)
	st.releaseRecv()
	st.call.closed()
}

func (c *h2conn) data(flags uint8, id uint32, p []byte) error {
	if id == 0 {
		return connError{http2.ErrCodeProtocol, "DATA on stream 0"}
	}
	n := int32(len(p))
	c.recvWindow -= n
	if c.recvWindow < 0 {
		return connError{http2.ErrCodeFlowControl, "DATA beyond the connection's window"}
	}
	c.consumed(nil, n)
	st := c.stream(id)
	if st == nil {
		if id > c.lastID || id%2 == 0 {
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("DATA on idle stream %d", id)}
		}
		return nil // a stream ended here; the client may not know yet
	}
	if st.remoteDone {
		c.reset(st, http2.ErrCodeStreamClosed)
		return nil
	}
	st.recvWindow -= n
	if st.recvWindow < 0 {
		c.reset(st, http2.ErrCodeFlowControl)
		return nil
	}
	p, err := unpad(flags, p)
	if err != nil {
		return err
	}
	// Known before the messages are handled: a call they end need not
	// reset the stream after its trailers.
	st.remoteDone = flags&flagEndStream != 0
	if err := st.receive(p); err != nil {
		c.end(st, err)
		return nil
	}
	if st.remoteDone {
		return c.endOfRequest(st)
	}
	c.consumed(st, n)
	return nil
}

// consumed gives back n bytes of receive window, of the connection (st nil)
// or of st, once a quarter of the window is consumed.
func (c *h2conn) consumed(st *h2stream, n int32) {
	unacked, window, id := &c.recvUnacked, &c.recvWindow, uint32(0)
	if st != nil {
		unacked, window, id = &st.recvUnacked, &st.recvWindow, st.id
	}
	*unacked += n
	if *unacked >= recvWindow/4 {
		c.queueControl(appendWindowUpdate(nil, id, uint32(*unacked)))
		*window += *unacked
		*unacked = 0
	}
}

// receive reassembles the length-prefixed gRPC messages of a DATA frame and
// hands each to the call; an error ends the call with its status.
func (st *h2stream) receive(p []byte) error {
	for len(p) > 0 {
		if st.msg == nil {
			if st.prefixN == 0 && len(p) >= 5 {
				n := int(binary.BigEndian.Uint32(p[1:5]))
				if err := checkPrefix(p[0], n); err != nil {
					return err
				}
				if len(p) >= 5+n {
					if err := aside(st.call.message, p[5:5+n]); err != nil {
						return err
					}
					p = p[5+n:]
					continue
				}
			}
			k := copy(st.prefix[st.prefixN:], p)
			st.prefixN += k
			p = p[k:]
			if st.prefixN < 5 {
				return nil
			}
			st.prefixN = 0
			n := int(binary.BigEndian.Uint32(st.prefix[1:5]))
			if err := checkPrefix(st.prefix[0], n); err != nil {
				return err
			}
			// The buffer grows with the data received, not to the length
			// the prefix announces: five bytes must not reserve 4 MiB.
			st.msg, st.msgLen = xdsBufferPool.Get(min(n, maxReadFrame)), n
			*st.msg = (*st.msg)[:0]
		}
		k := min(len(p), st.msgLen-len(*st.msg))
		if c := st.c; c.partial+k > c.t.maxPartial {
			return status.Errorf(codes.ResourceExhausted, "more than %d bytes of request messages being received on the connection", c.t.maxPartial)
		}
		st.c.partial += k
		st.grow(k)
		*st.msg = append(*st.msg, p[:k]...)
		p = p[k:]
		if len(*st.msg) == st.msgLen {
			buf := st.msg
			st.msg = nil
			st.c.partial -= st.msgLen
			err := aside(st.call.message, *buf)
			xdsBufferPool.Put(buf)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// grow makes room for k more bytes of the message being reassembled.
func (st *h2stream) grow(k int) {
	b := *st.msg
	if cap(b)-len(b) >= k {
		return
	}
	nb := xdsBufferPool.Get(min(st.msgLen, max(2*cap(b), len(b)+k)))
	*nb = append((*nb)[:0], b...)
	xdsBufferPool.Put(st.msg)
	st.msg = nb
}

// checkPrefix checks a message's prefix: not compressed, not too large.
func checkPrefix(flag byte, n int) error {
	if flag != 0 {
		return status.Error(codes.Unimplemented, "compressed messages are not supported")
	}
	if n > maxRecvMessage {
		return status.Errorf(codes.ResourceExhausted, "received message larger than max (%d vs. %d)", n, maxRecvMessage)
	}
	return nil
}

// releaseRecv gives back the buffer of a message being reassembled.
func (st *h2stream) releaseRecv() {
	if st.msg != nil {
		st.c.partial -= len(*st.msg)
		xdsBufferPool.Put(st.msg)
		st.msg = nil
	}
}

// reset ends st with RST_STREAM.
func (c *h2conn) reset(st *h2stream, code http2.ErrCode) {
	c.queueRST(st.id, code)
	c.forget(st)
	st.dropSends()
	st.releaseRecv()
	st.call.closed()
}

func (c *h2conn) rstStream(id uint32, p []byte) error {
	if len(p) != 4 {
		return connError{http2.ErrCodeFrameSize, "RST_STREAM of " + fmt.Sprint(len(p)) + " bytes"}
	}
	if id == 0 || id > c.lastID {
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("RST_STREAM on idle stream %d", id)}
	}
	st := c.stream(id)
	if st == nil {
		if st := c.endedStream(id); st != nil {
			st.dropSends() // its call ended: only its response is dropped
		}
		return nil
	}
	c.forget(st)
	st.dropSends()
	st.releaseRecv()
	st.call.closed()
	return nil
}

func (c *h2conn) settings(flags uint8, id uint32, p []byte) error {
	if id != 0 {
		return connError{http2.ErrCodeProtocol, "SETTINGS on a stream"}
	}
	if flags&flagAck != 0 {
		if len(p) != 0 {
			return connError{http2.ErrCodeFrameSize, "SETTINGS ACK with a payload"}
		}
		return nil
	}
	if len(p)%6 != 0 {
		return connError{http2.ErrCodeFrameSize, "SETTINGS of " + fmt.Sprint(len(p)) + " bytes"}
	}
	initialWindow, maxFrame, tableSize := int64(-1), uint32(0), int64(-1)
	for ; len(p) > 0; p = p[6:] {
		v := binary.BigEndian.Uint32(p[2:6])
		switch http2.SettingID(binary.BigEndian.Uint16(p[:2])) {
		case http2.SettingHeaderTableSize:
			tableSize = int64(v)
		case http2.SettingEnablePush:
			if v > 1 {
				return connError{http2.ErrCodeProtocol, fmt.Sprintf("SETTINGS_ENABLE_PUSH %d", v)}
			}
		case http2.SettingInitialWindowSize:
			if v > maxWindow {
				return connError{http2.ErrCodeFlowControl, fmt.Sprintf("SETTINGS_INITIAL_WINDOW_SIZE %d", v)}
			}
			initialWindow = int64(v)
		case http2.SettingMaxFrameSize:
			if v < maxReadFrame || v > maxFrameSizeLimit {
				return connError{http2.ErrCodeProtocol, fmt.Sprintf("SETTINGS_MAX_FRAME_SIZE %d", v)}
			}
			maxFrame = v
		}
	}
	return c.applySettings(initialWindow, maxFrame, tableSize)
}

func (c *h2conn) ping(flags uint8, id uint32, p []byte) error {
	if id != 0 {
		return connError{http2.ErrCodeProtocol, "PING on a stream"}
	}
	if len(p) != 8 {
		return connError{http2.ErrCodeFrameSize, "PING of " + fmt.Sprint(len(p)) + " bytes"}
	}
	if flags&flagAck != 0 {
		return nil // any frame read answers the keepalive
	}
	now := time.Now()
	if c.dataSent.Swap(false) {
		c.pingStrikes, c.lastPing = 0, time.Time{}
	}
	if !c.lastPing.IsZero() && now.Sub(c.lastPing) < pingMinTime {
		c.pingStrikes++
		if c.pingStrikes > maxPingStrikes {
			return connError{http2.ErrCodeEnhanceYourCalm, "too_many_pings"}
		}
	}
	c.lastPing = now
	c.queueControl(appendPing(nil, flagAck, [8]byte(p)))
	return nil
}

func (c *h2conn) windowUpdate(id uint32, p []byte) error {
	if len(p) != 4 {
		return connError{http2.ErrCodeFrameSize, "WINDOW_UPDATE of " + fmt.Sprint(len(p)) + " bytes"}
	}
	inc := binary.BigEndian.Uint32(p) & 0x7fffffff
	if id == 0 {
		if inc == 0 {
			return connError{http2.ErrCodeProtocol, "WINDOW_UPDATE of 0"}
		}
		if !c.grow(nil, inc) {
			return connError{http2.ErrCodeFlowControl, "connection window above 2^31-1"}
		}
		return nil
	}
	st := c.stream(id)
	if st == nil {
		if id > c.lastID {
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("WINDOW_UPDATE on idle stream %d", id)}
		}
		if st := c.endedStream(id); st != nil {
			c.grow(st, inc)
		}
		return nil
	}
	if inc == 0 {
		c.reset(st, http2.ErrCodeProtocol)
		return nil
	}
	if !c.grow(st, inc) {
		c.reset(st, http2.ErrCodeFlowControl)
	}
	return nil
}

// SendMsg sends a response message: it is marshalled and queued for the
// connection's writer, and SendMsg returns at once. The codec's pooled
// buffer is given back once written, or when the call ends first.
func (st *h2stream) SendMsg(m any) error {
	bs, err := st.c.t.codec.Marshal(m)
	if err != nil {
		return status.Errorf(codes.Internal, "marshal response: %v", err)
	}
	typ, replace := "", false // a SotW response replaces an older one of its type not yet written
	switch r := m.(type) {
	case *discoveryv3.DiscoveryResponse:
		typ, replace = r.GetTypeUrl(), true
	case *discoveryv3.DeltaDiscoveryResponse: // each one counts: never replaced
		typ = r.GetTypeUrl()
	}
	return st.queueMessage(bs, typ, replace)
}

// backlogged reports whether the connection had responses unwritten when
// the last message was queued: the peer reads slower than it is sent to.
func (st *h2stream) backlogged() bool {
	st.c.wmu.Lock()
	defer st.c.wmu.Unlock()
	return st.behind
}

// unmarshal decodes a request message.
func unmarshal(b []byte, m proto.Message) error {
	if err := proto.Unmarshal(b, m); err != nil {
		return status.Errorf(codes.Internal, "unmarshal request: %v", err)
	}
	return nil
}

// aside runs f(b) on a goroutine of its own and waits for it: handling a
// request (decoding it, the cache's watch) takes a deeper stack than reading
// frames, and the reader's stack would keep that size for the connection's
// life.
func aside(f func([]byte) error, b []byte) error {
	done := make(chan error, 1)
	go func() { done <- f(b) }()
	return <-done
}
