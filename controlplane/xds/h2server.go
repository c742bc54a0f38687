package xds

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"
)

// The transport serves gRPC over HTTP/2 with as little per connection as it
// can: gRPC-go's server runs four goroutines per connection (the stream's
// handler, the reader, the writer and keepalive: 20 KiB of stacks) and keeps
// 6–17 KiB of state and a pooled 32 KiB write buffer per connection, which
// put 10,000 proxies above 500 MiB before detour served anything. Here:
//
//   - one goroutine per connection, its reader. It reads each frame's header
//     into the connection, its payload into a pooled buffer released once the
//     frame is handled (h2conn.go), and has each request message handled
//     (ads.go, health.go) on a short-lived goroutine it waits for (aside).
//     It never writes to the socket: it queues frames (h2write.go).
//   - a writer goroutine started when the connection's queue has something
//     to write and ending once it is empty (or blocked by the peer's flow
//     control): control frames first, then responses' DATA frames, written
//     with writev from the response's pooled buffer (no copy), which is given
//     back once written (pace.go waits for that).
//   - one sweeper goroutine for every connection's keepalive (ping after
//     keepaliveTime without reads, close when not answered within
//     keepaliveTimeout), as gRPC-go's server parameters were.
//
// Response header blocks are fixed literals (h2frame.go); requests' are
// decoded with x/net's HPACK decoder.

const (
	// maxStreams is the SETTINGS_MAX_CONCURRENT_STREAMS advertised: a proxy
	// opens one ADS stream.
	maxStreams = 100
	// recvWindow is the receive window advertised for each stream and the
	// connection; consumed data is given back once a quarter is used.
	recvWindow = 1 << 20
	// maxQueuedControl bounds the control frames (SETTINGS and PING ACKs,
	// RST_STREAM, WINDOW_UPDATE) queued unwritten: a peer that asks for more
	// than it reads gets GOAWAY ENHANCE_YOUR_CALM (gRPC-go stops reading at 50
	// frames, net/http closes at 10,000).
	maxQueuedControl = 64 << 10
	// maxUnsent bounds the bytes of responses queued unwritten on a
	// connection, not counting each stream's first unwritten response of
	// each type, which a proxy may rightly leave unread until it ACKs (a
	// response larger alone is queued): past it the peer is not reading
	// them and the connection is closed. A SotW response replaces the one
	// of its type not yet written, so a proxy has at most two per type
	// queued (one being written); a delta response is never replaced. In
	// the benchmark's 10,000-proxy mesh a proxy's largest SotW response,
	// its listeners, is 49 KiB.
	maxUnsent = 16 << 20
	// maxHeaderBlock bounds a request's header block (HEADERS and its
	// CONTINUATION frames), advertised as SETTINGS_MAX_HEADER_LIST_SIZE (a
	// block is no larger than the list it encodes): past it the connection
	// ends with GOAWAY ENHANCE_YOUR_CALM. An ADS request's headers are a few
	// hundred bytes.
	maxHeaderBlock = 64 << 10
	// maxPartial bounds the bytes of request messages being reassembled on
	// a connection (each up to maxRecvMessage, its frames arriving as the
	// windows allow): the stream that passes it ends RESOURCE_EXHAUSTED.
	maxPartial = 8 << 20
	// maxRecvMessage is the largest request message, gRPC-go's default.
	maxRecvMessage = 4 << 20

	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
	// pingMinTime and maxPingStrikes are gRPC-go's enforcement policy: more
	// than maxPingStrikes pings each less than pingMinTime after the last,
	// with no data sent in between, is a ping flood.
	pingMinTime    = 10 * time.Second
	maxPingStrikes = 2

	handshakeTimeout = 10 * time.Second
	// goAwayLinger is how long a connection ended with GOAWAY is drained
	// before it is closed, so that the peer reads the GOAWAY rather than a
	// reset.
	goAwayLinger = time.Second
)

// keepalivePing is the payload of the sweeper's pings.
var keepalivePing = [8]byte{'d', 'e', 't', 'o', 'u', 'r', 'k', 'a'}

// errCallDone ends a call with status OK.
var errCallDone = errors.New("call done")

// call is the server side of one gRPC call, driven by the connection's reader.
type call interface {
	// message handles one request message (b is valid during the call
	// only). A non-nil error ends the call with its status (errCallDone: OK).
	message(b []byte) error
	// halfClose: the client sent its last message. As message; nil keeps
	// the call open (a server-streaming call).
	halfClose() error
	// closed: the call is over (ended, reset, or its connection gone).
	// Called once, after which nothing is sent.
	closed()
}

// method opens a call of one gRPC method; an error ends it with its status.
type method func(st *h2stream) (call, error)

// transport serves gRPC methods over HTTP/2 on the listeners given to serve.
type transport struct {
	log     *slog.Logger
	tls     *tls.Config // nil: plain text
	codec   xdsCodec
	methods map[string]method // by path: /package.Service/Method

	// keepaliveTime and keepaliveTimeout: the constants, but in tests.
	keepaliveTime, keepaliveTimeout time.Duration
	// maxUnsent and maxPartial: the constants, but in tests.
	maxUnsent, maxPartial int

	mu        sync.Mutex
	listeners map[net.Listener]bool
	conns     map[*h2conn]bool
	stopped   bool
	stop      chan struct{} // closed by Stop: ends the sweeper
	sweeping  bool
}

func newTransport(log *slog.Logger, cfg *tls.Config, codec xdsCodec, methods map[string]method) *transport {
	return &transport{log: log, tls: h2TLSConfig(cfg), codec: codec, methods: methods,
		keepaliveTime: keepaliveTime, keepaliveTimeout: keepaliveTimeout, maxUnsent: maxUnsent, maxPartial: maxPartial,
		listeners: make(map[net.Listener]bool), conns: make(map[*h2conn]bool), stop: make(chan struct{})}
}

// h2TLSConfig returns cfg offering ALPN "h2" (gRPC-go clients refuse a
// server that does not), also in the configs of its GetConfigForClient.
func h2TLSConfig(cfg *tls.Config) *tls.Config {
	if cfg == nil {
		return nil
	}
	cfg = cfg.Clone()
	if !slices.Contains(cfg.NextProtos, "h2") {
		cfg.NextProtos = append(cfg.NextProtos, "h2")
	}
	if get := cfg.GetConfigForClient; get != nil {
		cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			if c == nil || err != nil {
				return c, err
			}
			return h2TLSConfig(c), nil
		}
	}
	return cfg
}

// errStopped: serve was called after Stop.
var errStopped = errors.New("server stopped")

// serve accepts connections on l until Stop (nil) or l fails.
func (t *transport) serve(l net.Listener) error {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		l.Close()
		return errStopped
	}
	t.listeners[l] = true
	if !t.sweeping {
		t.sweeping = true
		go t.sweep()
	}
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.listeners, l)
		t.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			t.mu.Lock()
			stopped := t.stopped
			t.mu.Unlock()
			if stopped {
				return nil
			}
			if temporary(err) {
				// Out of file descriptors and the like: as net/http and
				// gRPC-go, back off.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				t.log.Warn("accept failed; retrying", "error", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		c := &h2conn{t: t, raw: nc, nc: nc, peer: nc.RemoteAddr().String()}
		t.mu.Lock()
		if t.stopped {
			t.mu.Unlock()
			nc.Close()
			return nil
		}
		t.conns[c] = true
		t.mu.Unlock()
		go c.serve()
	}
}

// shutdown closes the listeners and every connection at once; their
// readers end their calls.
func (t *transport) shutdown() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.stopped = true
	close(t.stop)
	for l := range t.listeners {
		l.Close()
	}
	for c := range t.conns {
		c.raw.Close()
	}
}

// sweep is the keepalive of every connection: a connection that read nothing
// for keepaliveTime is pinged, and closed when it still reads nothing
// keepaliveTimeout later.
func (t *transport) sweep() {
	tick := time.NewTicker(min(time.Second, t.keepaliveTime/4))
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case now := <-tick.C:
			t.mu.Lock()
			for c := range t.conns {
				c.keepalive(now)
			}
			t.mu.Unlock()
		}
	}
}

// keepalive is the sweeper's check of the connection at now (t.mu held).
func (c *h2conn) keepalive(now time.Time) {
	if !c.started.Load() {
		return // the handshake and the preface have deadlines of their own
	}
	if c.read.Swap(false) || c.idleSince.IsZero() {
		c.idleSince, c.pingedAt = now, time.Time{}
		return
	}
	switch {
	case c.pingedAt.IsZero() && now.Sub(c.idleSince) >= c.t.keepaliveTime:
		c.pingedAt = now
		c.queueControl(appendPing(nil, 0, keepalivePing))
	case !c.pingedAt.IsZero() && now.Sub(c.pingedAt) >= c.t.keepaliveTimeout:
		c.t.log.Debug("closing connection: keepalive ping not answered", "peer", c.peer)
		c.raw.Close()
	}
}

// temporary reports whether an Accept error passes: EMFILE, ENFILE, EINTR
// and timeouts (net.Error's deprecated Temporary,
// which net/http's and gRPC-go's servers read for the same decision: Timeout
// alone is false for running out of file descriptors, and the server stopped
// accepting for good).
func temporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}
