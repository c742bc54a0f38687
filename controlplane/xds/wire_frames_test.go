package xds

// The wire suite's raw HTTP/2 client: x/net/http2's Framer and hpack over a
// TCP connection, so that every frame the server sends is seen and every
// frame the client sends is chosen (split header blocks, padding, split and
// merged messages, windows, protocol errors). RFC 9113 section numbers
// name the rule each check holds the server to.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	sotwPath  = "/" + wireADS + "/StreamAggregatedResources"
	deltaPath = "/" + wireADS + "/DeltaAggregatedResources"
)

// rawFrame is a frame the server sent, copied out of the Framer's buffers.
type rawFrame struct {
	http2.FrameHeader
	data       []byte              // DATA (without padding), PING, GOAWAY debug data
	fields     []hpack.HeaderField // HEADERS and its CONTINUATIONs, decoded
	settings   []http2.Setting
	code       http2.ErrCode // RST_STREAM, GOAWAY
	lastStream uint32        // GOAWAY
	increment  uint32        // WINDOW_UPDATE
}

func (f rawFrame) String() string {
	switch f.Type {
	case http2.FrameHeaders:
		return fmt.Sprintf("%v %v", f.FrameHeader, f.fields)
	case http2.FrameGoAway, http2.FrameRSTStream:
		return fmt.Sprintf("%v %v last=%d %q", f.FrameHeader, f.code, f.lastStream, f.data)
	case http2.FrameWindowUpdate:
		return fmt.Sprintf("%v +%d", f.FrameHeader, f.increment)
	}
	return f.FrameHeader.String()
}

// rawStream is what the server sent on one stream.
type rawStream struct {
	headers  []hpack.HeaderField // the first HEADERS
	trailers []hpack.HeaderField // the HEADERS that ended the stream (also a trailers-only response's)
	data     []byte
	ended    bool
	reset    *http2.ErrCode
}

// rawConn is a raw HTTP/2 client connection.
type rawConn struct {
	t      *testing.T
	conn   net.Conn
	fr     *http2.Framer
	frames chan rawFrame
	// readErr is the read error that ended the connection (once frames is
	// closed).
	readErr error

	wmu    sync.Mutex // guards writing: fr's write side, enc, hbuf
	enc    *hpack.Encoder
	hbuf   bytes.Buffer
	nextID uint32

	// As frames are pumped:
	streams  map[uint32]*rawStream
	goaway   *rawFrame
	closed   bool
	seen     []rawFrame // every frame, for failure messages (DATA payloads dropped)
	autoGive bool       // give back the windows of every DATA frame at once

	// The server's windows for what the client sends (§6.9): its
	// SETTINGS_INITIAL_WINDOW_SIZE, and the connection's and each stream's
	// WINDOW_UPDATEs less the DATA sent (sendFlow).
	sendInitial int64
	sendConn    int64
	sendStream  map[uint32]int64 // updates less DATA sent, per stream
}

// dialRaw opens a raw HTTP/2 connection: the client preface and a SETTINGS
// frame with settings. The server's SETTINGS and PINGs are ACKed as they
// arrive; DATA windows are given back at once (autoGive) unless the test
// turns it off.
func dialRaw(t *testing.T, addr string, settings ...http2.Setting) *rawConn {
	t.Helper()
	c, start := dialRawHeld(t, addr, settings...)
	start()
	return c
}

// dialRawHeld is dialRaw with a connection that reads nothing until start
// is called: a proxy stuck at the TCP level, or a test that sets the
// connection up first.
func dialRawHeld(t *testing.T, addr string, settings ...http2.Setting) (c *rawConn, start func()) {
	t.Helper()
	d := net.Dialer{Timeout: wireTimeout}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c = &rawConn{t: t, conn: conn, frames: make(chan rawFrame, 4096), nextID: 1, streams: map[uint32]*rawStream{}, autoGive: true,
		sendInitial: 65535, sendConn: 65535, sendStream: map[uint32]int64{}}
	c.fr = http2.NewFramer(conn, conn)
	c.fr.AllowIllegalWrites = true
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	// Read frames of any size, to see (and fail on) one over the limit.
	c.fr.SetMaxReadFrameSize(1<<24 - 1)
	c.enc = hpack.NewEncoder(&c.hbuf)
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	c.write(func(fr *http2.Framer) error { return fr.WriteSettings(settings...) })
	done, quit := make(chan struct{}), make(chan struct{})
	var once sync.Once
	start = func() { once.Do(func() { go c.read(done, quit) }) }
	t.Cleanup(func() {
		close(quit)
		conn.Close()
		start()
		<-done
	})
	return c, start
}

// read copies every frame the server sends into c.frames until the
// connection ends (or quit is closed), ACKing SETTINGS and PINGs.
func (c *rawConn) read(done, quit chan struct{}) {
	defer close(done)
	defer close(c.frames)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.readErr = err
			return
		}
		rf := rawFrame{FrameHeader: f.Header()}
		switch f := f.(type) {
		case *http2.DataFrame:
			rf.data = slices.Clone(f.Data())
		case *http2.MetaHeadersFrame:
			rf.fields = slices.Clone(f.Fields)
		case *http2.SettingsFrame:
			_ = f.ForeachSetting(func(s http2.Setting) error {
				rf.settings = append(rf.settings, s)
				return nil
			})
			if !f.IsAck() {
				c.tryWrite(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			rf.data = slices.Clone(f.Data[:])
			if !f.IsAck() {
				c.tryWrite(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		case *http2.GoAwayFrame:
			rf.code, rf.lastStream, rf.data = f.ErrCode, f.LastStreamID, slices.Clone(f.DebugData())
		case *http2.RSTStreamFrame:
			rf.code = f.ErrCode
		case *http2.WindowUpdateFrame:
			rf.increment = f.Increment
		}
		select {
		case c.frames <- rf:
		case <-quit:
			return
		}
	}
}

// write writes frames with fr, failing the test on an error.
func (c *rawConn) write(w func(fr *http2.Framer) error) {
	c.t.Helper()
	if err := c.tryWrite(w); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawConn) tryWrite(w func(fr *http2.Framer) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(wireTimeout))
	return w(c.fr)
}

// headerBlock encodes fields; c.wmu must be held, and the block written
// before the next one is encoded (HPACK's dynamic table is shared).
func (c *rawConn) headerBlock(fields []hpack.HeaderField) []byte {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.enc.WriteField(f); err != nil {
			c.t.Fatal(err)
		}
	}
	return slices.Clone(c.hbuf.Bytes())
}

// grpcRequest are a gRPC request's headers for path.
func grpcRequest(path string, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: path},
		{Name: ":authority", Value: "detour-control-plane"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	}, extra...)
}

// open starts a new stream with fields as one HEADERS frame and returns its
// id.
func (c *rawConn) open(fields []hpack.HeaderField) uint32 {
	c.t.Helper()
	c.wmu.Lock()
	id := c.nextID
	c.nextID += 2
	c.wmu.Unlock()
	c.write(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.headerBlock(fields), EndHeaders: true})
	})
	return id
}

// grpcMessage is m framed as a gRPC message (not compressed).
func grpcMessage(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b))), b...)
}

// send writes msgs in one DATA frame.
func (c *rawConn) send(id uint32, end bool, msgs ...[]byte) {
	c.t.Helper()
	c.write(func(fr *http2.Framer) error { return fr.WriteData(id, end, bytes.Join(msgs, nil)) })
}

// sendFlow sends data on stream id in one DATA frame padded with pad bytes,
// once the server's windows allow it (§6.9.1: padding counts).
func (c *rawConn) sendFlow(id uint32, data []byte, pad int) {
	c.t.Helper()
	n := int64(len(data))
	if pad > 0 {
		n += int64(pad) + 1
	}
	c.pump(wireTimeout, fmt.Sprintf("the server's windows for %d more bytes (connection %d, stream %d)", n, c.sendConn, c.sendInitial+c.sendStream[id]),
		func() bool { return c.sendConn >= n && c.sendInitial+c.sendStream[id] >= n }, nil)
	c.write(func(fr *http2.Framer) error {
		if pad > 0 {
			return fr.WriteDataPadded(id, false, data, make([]byte, pad))
		}
		return fr.WriteData(id, false, data)
	})
	c.sendConn -= n
	c.sendStream[id] -= n
}

// stream is what the server sent on id so far.
func (c *rawConn) stream(id uint32) *rawStream {
	s, ok := c.streams[id]
	if !ok {
		s = &rawStream{}
		c.streams[id] = s
	}
	return s
}

// pump handles the server's frames until done holds (checked before each
// frame), failing after d or when the connection ends first. onFrame, when
// set, sees every frame first.
func (c *rawConn) pump(d time.Duration, want string, done func() bool, onFrame func(rawFrame)) {
	c.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for !done() {
		select {
		case f, ok := <-c.frames:
			if !ok {
				if c.closed {
					c.t.Fatalf("waiting for %s: the connection is closed (%v); frames: %v", want, c.readErr, c.seen)
				}
				c.closed = true
				continue
			}
			c.handle(f, onFrame)
		case <-timer.C:
			c.t.Fatalf("waiting for %s: nothing more within %s; frames: %v", want, d, c.seen)
		}
	}
}

// pumpFor handles the server's frames for d (or until the connection ends).
func (c *rawConn) pumpFor(d time.Duration, onFrame func(rawFrame)) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for !c.closed {
		select {
		case f, ok := <-c.frames:
			if !ok {
				c.closed = true
				return
			}
			c.handle(f, onFrame)
		case <-timer.C:
			return
		}
	}
}

func (c *rawConn) handle(f rawFrame, onFrame func(rawFrame)) {
	c.t.Helper()
	seen := f
	seen.data = nil
	c.seen = append(c.seen, seen)
	if onFrame != nil {
		onFrame(f)
	}
	if f.Length > 16384 {
		// No test advertises a larger SETTINGS_MAX_FRAME_SIZE.
		c.t.Fatalf("the server sent %v, over the client's SETTINGS_MAX_FRAME_SIZE 16384 (§4.2)", f)
	}
	if f.Type == http2.FrameData || f.Type == http2.FrameHeaders {
		// §5.1: a server sends DATA and HEADERS only on the streams its
		// client opened, and nothing of the kind once it ended one (§8.1).
		if f.StreamID%2 == 0 {
			c.t.Fatalf("the server sent %v on stream %d, which a client cannot have opened", f, f.StreamID)
		}
		if s := c.streams[f.StreamID]; s != nil && s.ended {
			c.t.Fatalf("the server sent %v on stream %d after it ended the stream", f, f.StreamID)
		}
	}
	switch f.Type {
	case http2.FrameData:
		s := c.stream(f.StreamID)
		s.data = append(s.data, f.data...)
		s.ended = s.ended || f.Flags.Has(http2.FlagDataEndStream)
		if c.autoGive && f.Length > 0 {
			c.write(func(fr *http2.Framer) error {
				if err := fr.WriteWindowUpdate(0, f.Length); err != nil {
					return err
				}
				if f.Flags.Has(http2.FlagDataEndStream) {
					return nil
				}
				return fr.WriteWindowUpdate(f.StreamID, f.Length)
			})
		}
	case http2.FrameHeaders:
		s := c.stream(f.StreamID)
		if s.headers == nil {
			s.headers = f.fields
		} else {
			s.trailers = f.fields
		}
		if f.Flags.Has(http2.FlagHeadersEndStream) {
			s.trailers = f.fields
			s.ended = true
		}
	case http2.FrameSettings:
		for _, st := range f.settings {
			if st.ID == http2.SettingInitialWindowSize {
				c.sendInitial = int64(st.Val)
			}
		}
	case http2.FrameWindowUpdate:
		if f.StreamID == 0 {
			c.sendConn += int64(f.increment)
		} else {
			c.sendStream[f.StreamID] += int64(f.increment)
		}
	case http2.FrameRSTStream:
		code := f.code
		c.stream(f.StreamID).reset = &code
	case http2.FrameGoAway:
		c.goaway = &f
	}
}

// headerValue is the value of name in fields ("" when missing).
func headerValue(fields []hpack.HeaderField, name string) string {
	for _, f := range fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// grpcMessages splits a stream's DATA into gRPC messages; a partial message at
// the end is left out.
func grpcMessages(t *testing.T, data []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(data) >= 5 {
		if data[0] != 0 {
			t.Fatalf("a response message has the compressed flag %d, and no encoding was asked for", data[0])
		}
		n := int(binary.BigEndian.Uint32(data[1:5]))
		if len(data) < 5+n {
			break
		}
		out = append(out, data[5:5+n])
		data = data[5+n:]
	}
	return out
}

// hasMessages reports whether stream id holds at least n whole messages.
func (c *rawConn) hasMessages(id uint32, n int) func() bool {
	return func() bool { return len(grpcMessages(c.t, c.stream(id).data)) >= n }
}

// decodeSotW decodes a SotW response message.
func decodeSotW(t *testing.T, m []byte) *discoveryv3.DiscoveryResponse {
	t.Helper()
	var r discoveryv3.DiscoveryResponse
	if err := proto.Unmarshal(m, &r); err != nil {
		t.Fatalf("a response does not decode: %v", err)
	}
	return &r
}

// checkResponseHeaders checks a gRPC response's headers: :status 200 and a
// gRPC content type.
func checkResponseHeaders(t *testing.T, s *rawStream) {
	t.Helper()
	if got := headerValue(s.headers, ":status"); got != "200" {
		t.Errorf("response :status %q, want 200 (headers %v)", got, s.headers)
	}
	if ct := headerValue(s.headers, "content-type"); !strings.HasPrefix(ct, "application/grpc") {
		t.Errorf("response content-type %q, want application/grpc…", ct)
	}
}

func isHexDigit(b byte) bool {
	return '0' <= b && b <= '9' || 'a' <= b && b <= 'f' || 'A' <= b && b <= 'F'
}

// grpcStatus is the grpc-status and (percent-decoded) grpc-message of a
// stream's trailers.
func grpcStatus(t *testing.T, s *rawStream) (int, string) {
	t.Helper()
	v := headerValue(s.trailers, "grpc-status")
	code, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("trailers %v: grpc-status %q is not a number", s.trailers, v)
	}
	msg := headerValue(s.trailers, "grpc-message")
	var b []byte
	for i := 0; i < len(msg); i++ {
		if msg[i] == '%' && i+2 < len(msg) {
			if v, err := strconv.ParseUint(msg[i+1:i+3], 16, 8); err == nil {
				b = append(b, byte(v))
				i += 2
				continue
			}
		}
		b = append(b, msg[i])
	}
	return code, string(b)
}

// TestWireFramesConnection: the server's preface is a SETTINGS frame (§3.4);
// it ACKs the client's SETTINGS (§6.5.3) and each PING with the same
// payload (§6.7); frames of an unknown type are ignored (§4.1, §5.5); no
// frame exceeds the client's SETTINGS_MAX_FRAME_SIZE (§4.2).
func TestWireFramesConnection(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")})
	c := dialRaw(t, ws.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	var first *rawFrame
	acked := false
	c.pump(wireTimeout, "the server's SETTINGS and the ACK of ours", func() bool { return first != nil && acked }, func(f rawFrame) {
		if first == nil {
			first = &f
		}
		acked = acked || f.Type == http2.FrameSettings && f.Flags.Has(http2.FlagSettingsAck)
	})
	if first.Type != http2.FrameSettings || first.Flags.Has(http2.FlagSettingsAck) {
		t.Fatalf("the server's first frame is %v, want its SETTINGS (§3.4)", first)
	}
	for _, s := range first.settings {
		// §6.5.2: the values a server may send.
		switch {
		case s.ID == http2.SettingEnablePush && s.Val != 0:
			t.Errorf("the server sent %v: a server must not set it to 1", s)
		case s.ID == http2.SettingInitialWindowSize && s.Val > 1<<31-1,
			s.ID == http2.SettingMaxFrameSize && (s.Val < 1<<14 || s.Val > 1<<24-1):
			t.Errorf("the server sent %v, out of its range", s)
		}
	}

	c.write(func(fr *http2.Framer) error { return fr.WriteRawFrame(0xfa, 0x3, 0, []byte("an extension frame")) })
	pings := [][8]byte{{'d', 'e', 't', 'o', 'u', 'r', '-', '1'}, {0, 1, 2, 3, 4, 5, 6, 7}}
	for _, p := range pings {
		c.write(func(fr *http2.Framer) error { return fr.WritePing(false, p) })
	}
	var got [][]byte
	c.pump(wireTimeout, "both PING ACKs", func() bool { return len(got) == len(pings) }, func(f rawFrame) {
		if f.Type == http2.FramePing && f.Flags.Has(http2.FlagPingAck) {
			got = append(got, f.data)
		}
	})
	for i, p := range pings {
		if !bytes.Equal(got[i], p[:]) {
			t.Errorf("PING ACK %d carries %q, want %q", i, got[i], p[:])
		}
	}

	// The connection still serves a stream.
	id := c.open(grpcRequest(sotwPath))
	c.send(id, false, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}))
	c.pump(wireTimeout, "the clusters", c.hasMessages(id, 1), nil)
	if c.goaway != nil {
		t.Errorf("GOAWAY after frames of unknown types: %v", c.goaway)
	}
}

// TestWireFramesHeaderTableSize: a client whose HPACK decoder has no
// dynamic table (SETTINGS_HEADER_TABLE_SIZE 0, §6.5.2) can decode every
// response header block: the server's encoder does not index into a table
// the client does not keep (RFC 7541 §4.2).
func TestWireFramesHeaderTableSize(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")})
	c, start := dialRawHeld(t, ws.addr, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
	c.fr.ReadMetaHeaders = hpack.NewDecoder(0, nil)
	start()
	req := grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	for i := range 3 {
		id := c.open(grpcRequest(sotwPath))
		c.send(id, false, req)
		c.pump(wireTimeout, fmt.Sprintf("stream %d's response", i), c.hasMessages(id, 1), nil)
		c.send(id, true)
		c.pump(wireTimeout, fmt.Sprintf("stream %d's trailers", i), func() bool { return c.stream(id).ended }, nil)
		checkResponseHeaders(t, c.stream(id))
		if code, msg := grpcStatus(t, c.stream(id)); code != 0 || len(grpcMessages(t, c.stream(id).data)) != 1 {
			t.Errorf("stream %d: grpc-status %d %q, %d messages; want 0 after one response", i, code, msg, len(grpcMessages(t, c.stream(id).data)))
		}
	}
}

// TestWireFramesRequestShapes: a request whose header block is padded,
// carries a priority and is split over CONTINUATION frames (§6.2, §6.10);
// a gRPC message split over several DATA frames, one of them padded
// (§6.1); two messages in one DATA frame; PRIORITY frames (§6.3) and a
// frame of an unknown type (§5.5), to be ignored: all served. The
// response's HEADERS carry :status 200 and content-type application/grpc,
// and the stream ends with grpc-status 0 when the client ends its side.
func TestWireFramesRequestShapes(t *testing.T) {
	t.Parallel()
	var sb SnapshotBuilder
	snap, err := sb.Snapshot([]*Resource{wireListener(t, "outbound", 15001, 0)}, []*Resource{wireCluster(t, "blackhole", 0), wireCluster(t, "passthrough", 0)})
	if err != nil {
		t.Fatal(err)
	}
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": snap})
	c := dialRaw(t, ws.addr)

	const id = 1
	c.write(func(fr *http2.Framer) error {
		block := c.headerBlock(grpcRequest(sotwPath))
		third := len(block) / 3
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:third], PadLength: 7,
			Priority: http2.PriorityParam{StreamDep: 0, Weight: 200}}); err != nil {
			return err
		}
		if err := fr.WriteContinuation(id, false, block[third:2*third]); err != nil {
			return err
		}
		return fr.WriteContinuation(id, true, block[2*third:])
	})
	c.nextID = 3
	c.write(func(fr *http2.Framer) error {
		if err := fr.WritePriority(id, http2.PriorityParam{StreamDep: 0, Weight: 15, Exclusive: true}); err != nil {
			return err
		}
		return fr.WriteRawFrame(0xfb, 0x1, id, []byte("an extension frame on an open stream"))
	})
	req := grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	c.write(func(fr *http2.Framer) error {
		if err := fr.WriteData(id, false, req[:3]); err != nil { // inside the 5-byte prefix
			return err
		}
		if err := fr.WriteDataPadded(id, false, req[3:10], make([]byte, 33)); err != nil {
			return err
		}
		return fr.WriteData(id, false, req[10:])
	})
	c.pump(wireTimeout, "the clusters", c.hasMessages(id, 1), nil)
	s := c.stream(id)
	checkResponseHeaders(t, s)
	first := decodeSotW(t, grpcMessages(t, s.data)[0])
	if first.GetVersionInfo() != snap.Versions().Clusters || len(first.GetResources()) != 2 {
		t.Fatalf("clusters: version %q, %d resources; want %q, 2", first.GetVersionInfo(), len(first.GetResources()), snap.Versions().Clusters)
	}

	// The ACK of the clusters and the request of the listeners, in one
	// padded DATA frame.
	ack := grpcMessage(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()})
	lds := grpcMessage(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType})
	c.write(func(fr *http2.Framer) error {
		return fr.WriteDataPadded(id, false, append(slices.Clone(ack), lds...), make([]byte, 255))
	})
	c.pump(wireTimeout, "the listeners", c.hasMessages(id, 2), nil)
	if l := decodeSotW(t, grpcMessages(t, s.data)[1]); l.GetTypeUrl() != resourcev3.ListenerType || l.GetVersionInfo() != snap.Versions().Listeners {
		t.Errorf("second response: type %q version %q, want the listeners at %q", l.GetTypeUrl(), l.GetVersionInfo(), snap.Versions().Listeners)
	}
	waitDebug(t, ws.srv, "n", wireTimeout, "clusters ACKed", func(n NodeStatus) bool { return n.Resources["clusters"].Acked == snap.Versions().Clusters })

	// The client ends its side: the server ends the stream, grpc-status 0.
	c.send(id, true)
	c.pump(wireTimeout, "the end of the stream", func() bool { return s.ended || s.reset != nil }, nil)
	if s.reset != nil {
		t.Fatalf("the stream was reset (%v), want trailers", *s.reset)
	}
	if code, msg := grpcStatus(t, s); code != 0 {
		t.Errorf("grpc-status %d %q after the client's END_STREAM, want 0", code, msg)
	}
	if c.goaway != nil {
		t.Errorf("GOAWAY: %v", c.goaway)
	}
}

// flowClient counts what the server sends on a raw connection against the
// windows the client gave.
type flowClient struct {
	t        *testing.T
	c        *rawConn
	conn     int64            // connection window given, in all
	streams  map[uint32]int64 // stream windows given, in all
	sent     map[uint32]int64 // DATA received per stream (flow-controlled length)
	total    int64            // DATA received on the connection
	maxFrame uint32
}

// dialFlow opens a raw connection whose client gives back no window unless
// the test does (no autoGive): its streams' initial window is initial, the
// connection's the default 65535 (§6.9.2: SETTINGS does not change it).
func dialFlow(t *testing.T, addr string, initial uint32) *flowClient {
	t.Helper()
	c := dialRaw(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: initial})
	c.autoGive = false
	return &flowClient{t: t, c: c, conn: 65535, streams: map[uint32]int64{}, sent: map[uint32]int64{}, maxFrame: 16384}
}

// onFrame fails as soon as a frame exceeds the maximum frame size or DATA
// exceeds a window.
func (fc *flowClient) onFrame(f rawFrame) {
	fc.t.Helper()
	if f.Length > fc.maxFrame {
		fc.t.Fatalf("the server sent %v, over SETTINGS_MAX_FRAME_SIZE %d (§4.2)", f, fc.maxFrame)
	}
	if f.Type != http2.FrameData {
		return
	}
	window, ok := fc.streams[f.StreamID]
	if !ok {
		fc.t.Fatalf("DATA on stream %d, which the client did not open: %v", f.StreamID, f)
	}
	fc.sent[f.StreamID] += int64(f.Length)
	fc.total += int64(f.Length)
	if fc.total > fc.conn || fc.sent[f.StreamID] > window {
		fc.t.Fatalf("the server sent %d bytes of DATA on the connection, %d on stream %d; the client allowed %d and %d (§6.9.1)",
			fc.total, fc.sent[f.StreamID], f.StreamID, fc.conn, window)
	}
}

// stalled waits until the server sent more DATA than before, and then
// nothing for 300 ms.
func (fc *flowClient) stalled(before int64, what string) {
	fc.t.Helper()
	fc.c.pump(wireTimeout, what, func() bool { return fc.total > before }, fc.onFrame)
	for {
		last := fc.total
		fc.c.pumpFor(300*time.Millisecond, fc.onFrame)
		if fc.total == last || fc.c.closed {
			return
		}
	}
}

// give sends WINDOW_UPDATEs: n bytes to the connection and to each of ids.
func (fc *flowClient) give(n uint32, ids ...uint32) {
	fc.t.Helper()
	fc.c.write(func(fr *http2.Framer) error {
		if err := fr.WriteWindowUpdate(0, n); err != nil {
			return err
		}
		for _, id := range ids {
			if err := fr.WriteWindowUpdate(id, n); err != nil {
				return err
			}
		}
		return nil
	})
	fc.conn += int64(n)
	for _, id := range ids {
		fc.streams[id] += int64(n)
	}
}

// giveUntil gives n bytes of window to the connection and to each of ids,
// and waits for more DATA, until done: what (the response or responses) must
// be done within 100 window updates.
func (fc *flowClient) giveUntil(n uint32, what string, done func() bool, ids ...uint32) {
	fc.t.Helper()
	window := "WINDOW_UPDATE"
	if len(ids) == 0 {
		window = "connection WINDOW_UPDATE"
	}
	for step := 0; !done(); step++ {
		if step > 100 {
			fc.t.Fatalf("%s did not end after 100 window updates", what)
		}
		before := fc.total
		fc.give(n, ids...)
		fc.stalled(before, fmt.Sprintf("more DATA after %s %d", window, step))
	}
}

// TestWireFramesFlowControl: the server never sends more DATA than the
// client's stream and connection windows allow (§5.2, §6.9.1) — the
// connection window shared by all streams — nor a frame over
// SETTINGS_MAX_FRAME_SIZE (§4.2); it resumes when a SETTINGS frame raises
// the initial window of an open stream (§6.9.2) and after each
// WINDOW_UPDATE; the responses are whole.
func TestWireFramesFlowControl(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": bigSnapshot(t)})
	sotw := grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ListenerType})
	delta := grpcMessage(t, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ListenerType})
	const grant = 96 << 10

	t.Run("stream window", func(t *testing.T) {
		t.Parallel()
		const initial = 20000
		fc := dialFlow(t, ws.addr, initial)
		c := fc.c
		id := c.open(grpcRequest(sotwPath))
		fc.streams[id] = initial
		c.send(id, false, sotw)
		fc.stalled(0, "the first DATA")
		t.Logf("sent %d of the initial window %d", fc.total, initial)
		// Control frames do not wait behind DATA the windows hold back.
		pinged := false
		c.write(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{'s', 't', 'a', 'l', 'l', 'e', 'd'}) })
		c.pump(wireServedWithin, "the PING ACK while the response waits for the window", func() bool { return pinged }, func(f rawFrame) {
			fc.onFrame(f)
			pinged = pinged || f.Type == http2.FramePing && f.Flags.Has(http2.FlagPingAck) && string(f.data) == "stalled\x00"
		})

		// Raising SETTINGS_INITIAL_WINDOW_SIZE grows the open stream's
		// window by the difference (§6.9.2).
		before := fc.total
		c.write(func(fr *http2.Framer) error {
			return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 2 * initial})
		})
		fc.streams[id] += initial
		fc.stalled(before, "more DATA after SETTINGS raised the initial window")

		fc.giveUntil(grant, "the response", c.hasMessages(id, 1), id)
		checkResponseHeaders(t, c.stream(id))
		checkBigListeners(t, "raw client", decodeSotW(t, grpcMessages(t, c.stream(id).data)[0]).GetResources())
	})

	t.Run("reset stream gives way", func(t *testing.T) {
		t.Parallel()
		fc := dialFlow(t, ws.addr, 1<<20)
		c := fc.c
		one := c.open(grpcRequest(sotwPath))
		fc.streams[one] = 1 << 20
		c.send(one, false, sotw)
		fc.stalled(0, "the listeners up to the connection window")
		// The client resets the stream whose response waits for the
		// connection window, opens another and gives the connection more
		// window: it goes to the new stream, none to the reset one beyond
		// what the window allowed before the reset.
		c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(one, http2.ErrCodeCancel) })
		allowed, atReset := fc.conn-fc.total, fc.sent[one]
		two := c.open(grpcRequest(sotwPath))
		fc.streams[two] = 1 << 20
		c.send(two, false, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}))
		fc.give(grant)
		c.pump(wireTimeout, "the clusters on the new stream", c.hasMessages(two, 1), fc.onFrame)
		c.pumpFor(300*time.Millisecond, fc.onFrame)
		if after := fc.sent[one] - atReset; after > allowed {
			t.Errorf("the server sent %d bytes of DATA on the reset stream after the reset, when the connection window had %d left", after, allowed)
		}
		if r := decodeSotW(t, grpcMessages(t, c.stream(two).data)[0]); r.GetTypeUrl() != resourcev3.ClusterType || len(r.GetResources()) != 1 {
			t.Errorf("the new stream's response: %v", r)
		}
	})

	t.Run("a stream waiting for its window holds up no other", func(t *testing.T) {
		t.Parallel()
		const initial = 20000
		fc := dialFlow(t, ws.addr, initial)
		c := fc.c
		big := c.open(grpcRequest(sotwPath))
		fc.streams[big] = initial
		c.send(big, false, sotw)
		fc.stalled(0, "the listeners up to the stream window")
		// The connection's window has room; the new stream's small
		// response must not wait behind the blocked one (§5.2).
		small := c.open(grpcRequest(sotwPath))
		fc.streams[small] = initial
		c.send(small, false, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}))
		c.pump(5*time.Second, "the clusters on a second stream while the first waits for its window", c.hasMessages(small, 1), fc.onFrame)
		fc.giveUntil(grant, "the listeners", c.hasMessages(big, 1), big)
		checkBigListeners(t, "the blocked stream", decodeSotW(t, grpcMessages(t, c.stream(big).data)[0]).GetResources())
	})

	t.Run("a lowered initial window goes negative", func(t *testing.T) {
		t.Parallel()
		const initial = 40000
		fc := dialFlow(t, ws.addr, initial)
		c := fc.c
		id := c.open(grpcRequest(sotwPath))
		fc.streams[id] = initial
		c.send(id, false, sotw)
		fc.stalled(0, "the listeners up to the stream window")
		// §6.9.2: lowering SETTINGS_INITIAL_WINDOW_SIZE by 30000 takes the
		// stream's window below zero; the server sends nothing until
		// WINDOW_UPDATEs bring it above zero again.
		const lower = 10000
		c.write(func(fr *http2.Framer) error {
			return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: lower})
		})
		fc.streams[id] -= initial - lower
		c.pumpFor(300*time.Millisecond, fc.onFrame)
		before := fc.total
		fc.give(grant, id)
		fc.stalled(before, "more DATA once WINDOW_UPDATE took the window above zero")
		fc.giveUntil(grant, "the response", c.hasMessages(id, 1), id)
		checkBigListeners(t, "raw client", decodeSotW(t, grpcMessages(t, c.stream(id).data)[0]).GetResources())
	})

	t.Run("the largest windows", func(t *testing.T) {
		t.Parallel()
		// Envoy's windows are large (256 MiB by default); these are the
		// largest there are (§6.9.1: 2^31-1): every response goes at once.
		const largest = 1<<31 - 1
		fc := dialFlow(t, ws.addr, largest)
		c := fc.c
		c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, largest-65535) })
		fc.conn = largest
		one := c.open(grpcRequest(sotwPath))
		two := c.open(grpcRequest(deltaPath))
		fc.streams[one], fc.streams[two] = largest, largest
		c.send(one, false, sotw)
		c.send(two, false, delta)
		c.pump(wireTimeout, "both responses with no window given back", func() bool {
			return len(grpcMessages(t, c.stream(one).data)) == 1 && len(grpcMessages(t, c.stream(two).data)) == 1
		}, fc.onFrame)
		checkBigListeners(t, "sotw", decodeSotW(t, grpcMessages(t, c.stream(one).data)[0]).GetResources())
		// Give back what was read, up to the largest window again: the
		// server must not overflow its count of it (§6.9.1).
		fc.give(uint32(fc.sent[one]), one)
		c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(two, uint32(fc.sent[two])) })
		fc.streams[two] += fc.sent[two]
		c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(fc.sent[two])) })
		fc.conn += fc.sent[two]
		c.pumpFor(300*time.Millisecond, fc.onFrame)
		if c.closed || c.goaway != nil || c.stream(one).reset != nil {
			t.Fatalf("windows given back up to 2^31-1 ended the connection or stream (GOAWAY %v, reset %v)", c.goaway, c.stream(one).reset)
		}
		ack := grpcMessage(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, VersionInfo: decodeSotW(t, grpcMessages(t, c.stream(one).data)[0]).GetVersionInfo(),
			ResponseNonce: decodeSotW(t, grpcMessages(t, c.stream(one).data)[0]).GetNonce()})
		c.send(one, false, ack, grpcMessage(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType}))
		c.pump(wireTimeout, "the clusters after the windows were given back", c.hasMessages(one, 2), fc.onFrame)
	})

	t.Run("connection window shared by two streams", func(t *testing.T) {
		t.Parallel()
		const initial = 1 << 20 // more than a response: the connection's window binds
		fc := dialFlow(t, ws.addr, initial)
		c := fc.c
		one := c.open(grpcRequest(sotwPath))
		two := c.open(grpcRequest(deltaPath))
		fc.streams[one], fc.streams[two] = initial, initial
		c.send(one, false, sotw)
		c.send(two, false, delta)
		fc.stalled(0, "the first DATA")
		t.Logf("sent %d of the connection window 65535 (streams %v)", fc.total, fc.sent)
		fc.giveUntil(grant, "the responses", func() bool { return c.hasMessages(one, 1)() && c.hasMessages(two, 1)() })
		checkBigListeners(t, "sotw", decodeSotW(t, grpcMessages(t, c.stream(one).data)[0]).GetResources())
		var d discoveryv3.DeltaDiscoveryResponse
		if err := proto.Unmarshal(grpcMessages(t, c.stream(two).data)[0], &d); err != nil || len(d.GetResources()) != bigListeners {
			t.Errorf("delta: %d listeners, %v; want %d", len(d.GetResources()), err, bigListeners)
		}
	})
}

// TestWireFramesResetStream: RST_STREAM from the client ends that stream
// only: the connection serves a new stream, and /debug/nodes forgets the
// reset one.
func TestWireFramesResetStream(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")})
	c := dialRaw(t, ws.addr)
	req := grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	one := c.open(grpcRequest(sotwPath))
	c.send(one, false, req)
	c.pump(wireTimeout, "the clusters on the first stream", c.hasMessages(one, 1), nil)
	c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(one, http2.ErrCodeCancel) })

	two := c.open(grpcRequest(deltaPath))
	c.send(two, false, grpcMessage(t, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}))
	c.pump(wireTimeout, "the clusters on a new stream after RST_STREAM", c.hasMessages(two, 1), nil)
	var d discoveryv3.DeltaDiscoveryResponse
	if err := proto.Unmarshal(grpcMessages(t, c.stream(two).data)[0], &d); err != nil || len(d.GetResources()) != 1 {
		t.Fatalf("the new stream's response: %v, %v", &d, err)
	}
	waitDebug(t, ws.srv, "n", 5*time.Second, "the delta stream alone", func(n NodeStatus) bool {
		return len(n.Streams) == 1 && n.Streams[0].Protocol == "delta"
	})
	if c.goaway != nil {
		t.Errorf("GOAWAY after the client's RST_STREAM: %v", c.goaway)
	}
}

// TestWireFramesProtocolErrors: a connection error (§5.4.1) closes the
// connection; a GOAWAY before it, which the RFC asks for (SHOULD), names
// the error the RFC gives. The server keeps serving other connections.
// The cases marked strict are RFC 9113 MUSTs that grpc-go's server (which
// served ADS before detour's transport) ignores.
func TestWireFramesProtocolErrors(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")})
	tests := []struct {
		name string
		send func(c *rawConn)
		want []http2.ErrCode // the GOAWAY codes the RFC allows
	}{
		{
			name: "DATA on stream 0 (§6.1)",
			send: func(c *rawConn) { c.send(0, false, []byte("x")) },
			want: []http2.ErrCode{http2.ErrCodeProtocol},
		},
		{
			name: "HEADERS on an even stream id (§5.1.1)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error {
					return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: c.headerBlock(grpcRequest(sotwPath)), EndHeaders: true})
				})
			},
			want: []http2.ErrCode{http2.ErrCodeProtocol},
		},
		{
			name: "a stream id lower than one already used (§5.1.1)",
			send: func(c *rawConn) {
				for _, id := range []uint32{5, 3} {
					c.write(func(fr *http2.Framer) error {
						return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.headerBlock(grpcRequest(sotwPath)), EndHeaders: true})
					})
				}
			},
			// Stream 3 was closed when stream 5 opened: STREAM_CLOSED is
			// allowed too (§5.1).
			want: []http2.ErrCode{http2.ErrCodeProtocol, http2.ErrCodeStreamClosed},
		},
		{
			name: "a frame other than CONTINUATION after an unfinished header block (§6.10)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error {
					block := c.headerBlock(grpcRequest(sotwPath))
					if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:len(block)/2]}); err != nil {
						return err
					}
					return fr.WritePing(false, [8]byte{1})
				})
			},
			want: []http2.ErrCode{http2.ErrCodeProtocol},
		},
		{
			name: "a header block HPACK cannot decode (§4.3)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error {
					// An indexed field far past both tables.
					return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff, 0x0f}, EndHeaders: true})
				})
			},
			want: []http2.ErrCode{http2.ErrCodeCompression},
		},
		{
			name: "PING on a stream (§6.7)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error { return fr.WriteRawFrame(http2.FramePing, 0, 1, make([]byte, 8)) })
			},
			want: []http2.ErrCode{http2.ErrCodeProtocol},
		},
		{
			name: "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1 (§6.5.2)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error {
					return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
				})
			},
			want: []http2.ErrCode{http2.ErrCodeFlowControl},
		},
		{
			name: "SETTINGS with ACK and a payload (§6.5)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error { return fr.WriteRawFrame(http2.FrameSettings, 0x1, 0, make([]byte, 6)) })
			},
			want: []http2.ErrCode{http2.ErrCodeFrameSize},
		},
		{
			name: "CONTINUATION without HEADERS (§6.10)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error { return fr.WriteContinuation(1, true, []byte{0x82}) })
			},
			want: []http2.ErrCode{http2.ErrCodeProtocol},
		},
		{
			name: "strict: SETTINGS_ENABLE_PUSH 2 (§6.5.2)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error {
					return fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 2})
				})
			},
			want: []http2.ErrCode{http2.ErrCodeProtocol},
		},
		{
			name: "strict: SETTINGS_MAX_FRAME_SIZE under 16384 (§6.5.2)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error {
					return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 100})
				})
			},
			want: []http2.ErrCode{http2.ErrCodeProtocol},
		},
		{
			name: "strict: PUSH_PROMISE from the client (§8.4)",
			send: func(c *rawConn) {
				c.open(grpcRequest(sotwPath))
				c.write(func(fr *http2.Framer) error {
					return fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: c.headerBlock(grpcRequest(sotwPath)), EndHeaders: true})
				})
			},
			want: []http2.ErrCode{http2.ErrCodeProtocol},
		},
		{
			name: "strict: DATA on an idle stream (§5.1)",
			send: func(c *rawConn) { c.send(7, false, []byte("xxxxx")) },
			want: []http2.ErrCode{http2.ErrCodeProtocol},
		},
		{
			name: "strict: a WINDOW_UPDATE taking the connection's window over 2^31-1 (§6.9.1)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 1<<31-1) })
			},
			want: []http2.ErrCode{http2.ErrCodeFlowControl},
		},
		{
			name: "WINDOW_UPDATE of 0 on the connection (§6.9)",
			send: func(c *rawConn) {
				c.write(func(fr *http2.Framer) error { return fr.WriteRawFrame(http2.FrameWindowUpdate, 0, 0, make([]byte, 4)) })
			},
			want: []http2.ErrCode{http2.ErrCodeProtocol},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := dialRaw(t, ws.addr)
			// Past the server's SETTINGS first.
			c.pump(wireTimeout, "the server's SETTINGS", func() bool { return len(c.seen) > 0 }, nil)
			tc.send(c)
			c.pumpFor(wireTimeout, nil)
			if !c.closed {
				t.Fatalf("the connection is still open %s later; frames: %v", wireTimeout, c.seen)
			}
			if c.goaway == nil {
				t.Logf("closed without GOAWAY (the RFC asks for one: SHOULD); read error %v", c.readErr)
			} else if !slices.Contains(tc.want, c.goaway.code) {
				t.Errorf("GOAWAY %v, want one of %v", c.goaway, tc.want)
			}
			for id, s := range c.streams {
				if len(s.data) > 0 {
					t.Errorf("stream %d was served (%d bytes) on a connection in error", id, len(s.data))
				}
			}
		})
	}
	t.Run("another connection", func(t *testing.T) {
		t.Parallel()
		c := dialRaw(t, ws.addr)
		id := c.open(grpcRequest(sotwPath))
		c.send(id, false, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}))
		c.pump(wireTimeout, "the clusters", c.hasMessages(id, 1), nil)
	})
}

// TestWireFramesStatus: gRPC's status on the wire. An unknown method is
// grpc-status 12 (UNIMPLEMENTED) with a grpc-message; an error of the ADS
// server (a first request naming no node, a node id that changes) is
// grpc-status 3 with its message, percent-encoded on the wire as gRPC says;
// an empty message is a message (a unary call answers it); a message with
// the compressed flag but no grpc-encoding ends its stream with an error,
// and the connection keeps serving; one in an encoding the server lacks is
// grpc-status 12; Envoy's other request headers and gRPC metadata are
// ignored; a content type that is not gRPC is refused (HTTP 415, a gRPC
// error, or RST_STREAM); application/grpc+proto is served, after PRIORITY
// frames on the closed streams.
func TestWireFramesStatus(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")})
	c := dialRaw(t, ws.addr)
	endedOrReset := func(id uint32) func() bool {
		return func() bool { return c.stream(id).ended || c.stream(id).reset != nil }
	}
	req := grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})

	for _, path := range []string{"/" + wireADS + "/NoSuchMethod", "/no.such.Service/Method"} {
		id := c.open(grpcRequest(path))
		c.send(id, true, req)
		c.pump(wireTimeout, "the status of "+path, endedOrReset(id), nil)
		s := c.stream(id)
		if s.reset != nil {
			t.Fatalf("%s: RST_STREAM %v, want a gRPC status", path, *s.reset)
		}
		checkResponseHeaders(t, s)
		if code, msg := grpcStatus(t, s); code != 12 || msg == "" {
			t.Errorf("%s: grpc-status %d grpc-message %q, want 12 with a message", path, code, msg)
		}
	}

	noNode := c.open(grpcRequest(sotwPath))
	c.send(noNode, false, grpcMessage(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType}))
	c.pump(wireTimeout, "the status of a request naming no node", endedOrReset(noNode), nil)
	if code, msg := grpcStatus(t, c.stream(noNode)); code != 3 || !strings.Contains(msg, "node") {
		t.Errorf("a request naming no node: grpc-status %d grpc-message %q, want 3 with the server's message", code, msg)
	}

	// grpc-message is percent-encoded: on the wire only printable ASCII,
	// '%' only as an escape; decoded, the server's message whole.
	changed := c.open(grpcRequest(sotwPath))
	c.send(changed, false, req, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "nœud-100%"}, TypeUrl: resourcev3.ClusterType}))
	c.pump(wireTimeout, "the status of a stream whose node id changed", endedOrReset(changed), nil)
	raw := headerValue(c.stream(changed).trailers, "grpc-message")
	for i := 0; i < len(raw); i++ {
		if raw[i] < 0x20 || raw[i] > 0x7e || raw[i] == '%' && (i+2 >= len(raw) || !isHexDigit(raw[i+1]) || !isHexDigit(raw[i+2])) {
			t.Errorf("grpc-message %q is not percent-encoded (byte %d)", raw, i)
			break
		}
	}
	if code, msg := grpcStatus(t, c.stream(changed)); code != 3 || !strings.Contains(msg, "nœud-100%") {
		t.Errorf("a node id changed on the stream: grpc-status %d grpc-message %q, want 3 naming nœud-100%%", code, msg)
	}

	// An empty message (a HealthCheckRequest for the server as a whole
	// encodes to no bytes) is a message: the unary call answers it.
	check := c.open(grpcRequest("/grpc.health.v1.Health/Check"))
	c.send(check, true, []byte{0, 0, 0, 0, 0})
	c.pump(wireTimeout, "the answer to an empty health Check", endedOrReset(check), nil)
	if s := c.stream(check); s.reset != nil || len(grpcMessages(t, s.data)) != 1 {
		t.Errorf("an empty health Check: reset %v, %d messages; want one answer", s.reset, len(grpcMessages(t, s.data)))
	} else {
		var r healthpb.HealthCheckResponse
		if err := proto.Unmarshal(grpcMessages(t, s.data)[0], &r); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("an empty health Check: %v, %v; want SERVING", &r, err)
		}
		if code, msg := grpcStatus(t, s); code != 0 {
			t.Errorf("an empty health Check: grpc-status %d %q, want 0", code, msg)
		}
	}

	compressed := c.open(grpcRequest(sotwPath))
	flagged := slices.Clone(req)
	flagged[0] = 1
	c.send(compressed, false, flagged)
	c.pump(wireTimeout, "the end of a stream sending a compressed message without grpc-encoding", endedOrReset(compressed), nil)
	if s := c.stream(compressed); s.reset != nil {
		t.Logf("compressed message: RST_STREAM %v", *s.reset)
	} else if code, msg := grpcStatus(t, s); code == 0 || len(s.data) > 0 {
		t.Errorf("compressed message without grpc-encoding: grpc-status %d %q after %d bytes of DATA, want an error status and nothing served", code, msg, len(s.data))
	} else {
		t.Logf("compressed message: grpc-status %d %q", code, msg)
	}

	for _, ct := range []string{"text/plain", "application/json"} {
		id := c.open([]hpack.HeaderField{
			{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: sotwPath},
			{Name: ":authority", Value: "detour-control-plane"}, {Name: "content-type", Value: ct}, {Name: "te", Value: "trailers"},
		})
		c.send(id, true, req)
		c.pump(wireTimeout, "the answer to content-type "+ct, endedOrReset(id), nil)
		s := c.stream(id)
		switch {
		case s.reset != nil:
		case headerValue(s.headers, ":status") != "200":
		default:
			if code, msg := grpcStatus(t, s); code == 0 || len(s.data) > 0 {
				t.Errorf("content-type %s: served (grpc-status %d %q, %d bytes of DATA), want it refused", ct, code, msg, len(s.data))
			}
		}
	}

	// Envoy's request headers and gRPC metadata the server does not use are
	// ignored; grpc-encoding identity with uncompressed messages is served.
	envoyLike := c.open(grpcRequest(sotwPath,
		hpack.HeaderField{Name: "user-agent", Value: "envoy/1.36.0 grpc-google-cpp"},
		hpack.HeaderField{Name: "grpc-accept-encoding", Value: "identity,deflate,gzip"},
		hpack.HeaderField{Name: "grpc-encoding", Value: "identity"},
		hpack.HeaderField{Name: "x-envoy-peer-metadata-bin", Value: "AAECAwQ="},
		hpack.HeaderField{Name: "x-request-id", Value: "4b1a1f44-7a1b-4c9e-9d0e-0c1d2e3f4a5b"},
	))
	c.send(envoyLike, false, req)
	c.pump(wireTimeout, "the clusters asked with Envoy's headers", c.hasMessages(envoyLike, 1), nil)
	checkResponseHeaders(t, c.stream(envoyLike))

	// A message compressed with an encoding the server does not have:
	// UNIMPLEMENTED (gRPC's compression spec).
	gzipped := c.open(grpcRequest(sotwPath, hpack.HeaderField{Name: "grpc-encoding", Value: "x-detour-none"}))
	c.send(gzipped, false, flagged)
	c.pump(wireTimeout, "the end of a stream in an unknown grpc-encoding", endedOrReset(gzipped), nil)
	if s := c.stream(gzipped); s.reset != nil {
		t.Logf("unknown grpc-encoding: RST_STREAM %v", *s.reset)
	} else if code, msg := grpcStatus(t, s); code != 12 || len(s.data) > 0 {
		t.Errorf("a message in an unknown grpc-encoding: grpc-status %d %q after %d bytes of DATA, want 12 and nothing served", code, msg, len(s.data))
	}

	// PRIORITY on a closed stream is allowed (§5.1) and ignored.
	for id := uint32(1); id < c.nextID; id += 2 {
		if c.stream(id).ended {
			c.write(func(fr *http2.Framer) error { return fr.WritePriority(id, http2.PriorityParam{Weight: 1}) })
		}
	}
	plus := c.open(append(grpcRequest(sotwPath)[:4], hpack.HeaderField{Name: "content-type", Value: "application/grpc+proto"}, hpack.HeaderField{Name: "te", Value: "trailers"}))
	c.send(plus, false, req)
	c.pump(wireTimeout, "the clusters asked with application/grpc+proto", c.hasMessages(plus, 1), nil)
	checkResponseHeaders(t, c.stream(plus))
	if c.goaway != nil || c.closed {
		t.Errorf("the connection ended (GOAWAY %v)", c.goaway)
	}
}

// TestWireFramesMalformedRequest: a malformed request (§8.2, §8.3: header
// names not lower case, pseudo-header fields misplaced, repeated, unknown
// or missing, connection-specific fields) is never served. The RFC says a
// stream error of type PROTOCOL_ERROR (§8.1.1), or the connection closed,
// which an endpoint may choose instead (§5.4.1); an error response (HTTP
// 4xx, or a gRPC error status) is accepted too, as grpc-go answers a
// request without :path or :method. Strict (grpc-go's server, which served
// ADS before detour's transport, serves it): "te" with a value other than
// "trailers" (§8.2.2).
func TestWireFramesMalformedRequest(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")})
	req := grpcRequest(sotwPath)
	field := func(name, value string) hpack.HeaderField { return hpack.HeaderField{Name: name, Value: value} }
	tests := []struct {
		name   string
		fields []hpack.HeaderField
	}{
		{"upper-case name", append(slices.Clone(req), field("X-Envoy-Thing", "1"))},
		{"pseudo-header after a regular one", append(slices.Clone(req[1:]), req[0])},
		{"repeated :path", append(slices.Clone(req[:3]), append([]hpack.HeaderField{field(":path", sotwPath)}, req[3:]...)...)},
		{"repeated :method", append([]hpack.HeaderField{field(":method", "POST")}, req...)},
		{"unknown pseudo-header", append(slices.Clone(req[:4]), append([]hpack.HeaderField{field(":protocol-x", "y")}, req[4:]...)...)},
		{"missing :path", append(slices.Clone(req[:2]), req[3:]...)},
		{"missing :method", slices.Clone(req[1:])},
		{"connection: keep-alive", append(slices.Clone(req), field("connection", "keep-alive"))},
		{"te: gzip (strict)", append(slices.Clone(req[:5]), field("te", "gzip"))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := dialRaw(t, ws.addr)
			id := c.open(tc.fields)
			c.send(id, false, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}))
			s := c.stream(id)
			c.pump(wireTimeout, "the stream's end", func() bool { return c.closed || s.reset != nil || s.ended || len(s.data) > 0 }, nil)
			if len(s.data) > 0 {
				t.Fatalf("served: %d bytes of DATA (headers %v)", len(s.data), s.headers)
			}
			if s.ended && s.reset == nil {
				// A response ended the stream: the server may still reset it (NO_ERROR, §8.1).
				c.pumpFor(200*time.Millisecond, nil)
			}
			switch {
			case len(s.data) > 0:
				t.Errorf("served: %d bytes of DATA (headers %v)", len(s.data), s.headers)
			case s.ended && headerValue(s.headers, ":status") != "200":
				t.Logf("refused with HTTP :status %s", headerValue(s.headers, ":status"))
			case s.ended:
				code, msg := grpcStatus(t, s)
				if code == 0 {
					t.Errorf("answered grpc-status 0, want the request refused")
				}
				t.Logf("refused with grpc-status %d %q (then RST_STREAM %v)", code, msg, s.reset)
			case s.reset != nil:
				if *s.reset != http2.ErrCodeProtocol {
					t.Errorf("RST_STREAM %v, want PROTOCOL_ERROR", *s.reset)
				}
			case c.closed:
				if c.goaway != nil && c.goaway.code != http2.ErrCodeProtocol {
					t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", c.goaway)
				}
			}
		})
	}
}

// TestWireStop: Stop closes every connection at once — a grpc-go proxy's
// stream ends with an error, a raw connection is closed (a GOAWAY before
// is allowed) — and the address no longer serves.
func TestWireStop(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")})
	ctx := wireContext(t)
	st := openSotW(ctx, t, discoveryv3.NewAggregatedDiscoveryServiceClient(ws.dial(t)), &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	rs := receiveAll(st.Recv)
	recvWithin(t, rs, wireTimeout, "the grpc-go proxy's clusters")
	c := dialRaw(t, ws.addr)
	id := c.open(grpcRequest(sotwPath))
	c.send(id, false, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}))
	c.pump(wireTimeout, "the raw proxy's clusters", c.hasMessages(id, 1), nil)

	ws.srv.Stop()
	if err := endWithin(t, rs, 5*time.Second, "the grpc-go proxy's stream after Stop"); status.Code(err) == codes.OK {
		t.Errorf("the grpc-go proxy's stream ended with %v after Stop, want an error", err)
	}
	c.pumpFor(5*time.Second, nil)
	if !c.closed {
		t.Errorf("the raw connection is open 5s after Stop; frames: %v", c.seen)
	}
	if c.goaway != nil && c.goaway.lastStream < id {
		// §6.8: the last stream id covers every stream the server acted on.
		t.Errorf("GOAWAY %v names last stream %d, but stream %d was served", c.goaway, c.goaway.lastStream, id)
	}
	if conn, err := net.DialTimeout("tcp", ws.addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections after Stop", ws.addr)
	}
}

// TestWireStuckConnection: a proxy stuck at the TCP level — it reads
// nothing while 10 MiB of responses, more than its socket buffers and the
// server's hold, are due on 24 streams — holds up no one: another proxy on another connection is
// served and pushed a change meanwhile. When the stuck proxy reads again,
// after 2 s, it gets every response whole.
func TestWireStuckConnection(t *testing.T) {
	t.Parallel()
	const streams = 24
	nodes := map[string]*Snapshot{"n": bigSnapshot(t), "other": wireSnapshot(t, "blackhole")}
	ws := startWire(t, Options{}, nodes)
	c, start := dialRawHeld(t, ws.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	if err := c.conn.(*net.TCPConn).SetReadBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 1<<30) })
	ids := make([]uint32, streams)
	for i := range ids {
		ids[i] = c.open(grpcRequest(sotwPath))
		c.send(ids[i], false, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ListenerType}))
	}
	stuck := time.Now()
	waitDebug(t, ws.srv, "n", wireTimeout, fmt.Sprintf("%d streams", streams), func(n NodeStatus) bool { return len(n.Streams) == streams })

	ctx := wireContext(t)
	st := openSotW(ctx, t, discoveryv3.NewAggregatedDiscoveryServiceClient(ws.dial(t)), &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "other"}, TypeUrl: resourcev3.ClusterType})
	rs := receiveAll(st.Recv)
	first := recvWithin(t, rs, wireServedWithin, "the other proxy's clusters while a connection is stuck")
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	changed := maps.Clone(nodes)
	changed["other"] = wireSnapshot(t, "blackhole", "passthrough")
	setWire(t, ws.srv, changed)
	if r := recvWithin(t, rs, wireServedWithin, "the other proxy's change while a connection is stuck"); len(r.GetResources()) != 2 {
		t.Fatalf("the other proxy's change: %v", r)
	}
	if d := time.Since(stuck); d < 2*time.Second {
		time.Sleep(2*time.Second - d)
	}

	start()
	c.pump(wireTimeout, "every stream's listeners once the stuck proxy reads", func() bool {
		for _, id := range ids {
			if len(grpcMessages(t, c.stream(id).data)) == 0 {
				return false
			}
		}
		return true
	}, nil)
	for i, id := range ids {
		checkBigListeners(t, fmt.Sprintf("stream %d", i), decodeSotW(t, grpcMessages(t, c.stream(id).data)[0]).GetResources())
	}
}

// TestWireConcurrentStreams: one connection carries as many streams as the
// server's SETTINGS_MAX_CONCURRENT_STREAMS allows, all served; a stream
// over the limit is refused (§5.1.2: RST_STREAM REFUSED_STREAM or
// PROTOCOL_ERROR) and not served. A server allowing more than 200 is
// checked with 200.
func TestWireConcurrentStreams(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")})
	c := dialRaw(t, ws.addr)
	limit := uint32(1<<32 - 1) // §6.5.2: unlimited until the server says
	var settings *rawFrame
	c.pump(wireTimeout, "the server's SETTINGS", func() bool { return settings != nil }, func(f rawFrame) {
		if f.Type == http2.FrameSettings && !f.Flags.Has(http2.FlagSettingsAck) {
			settings = &f
		}
	})
	for _, s := range settings.settings {
		if s.ID == http2.SettingMaxConcurrentStreams {
			limit = s.Val
		}
	}
	open := min(limit, 200)
	over := limit <= 200
	t.Logf("SETTINGS_MAX_CONCURRENT_STREAMS %d: opening %d streams (one more: %v)", limit, open, over)
	if open == 0 {
		t.Fatal("the server allows no stream")
	}
	req := grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	var ids []uint32
	for range open {
		id := c.open(grpcRequest(sotwPath))
		c.send(id, false, req)
		ids = append(ids, id)
	}
	served := func() bool {
		for _, id := range ids {
			if len(grpcMessages(t, c.stream(id).data)) == 0 {
				return false
			}
		}
		return true
	}
	c.pump(wireTimeout, fmt.Sprintf("responses on all %d streams", open), served, nil)
	if !over {
		return
	}
	extra := c.open(grpcRequest(sotwPath))
	c.send(extra, false, req)
	s := c.stream(extra)
	c.pump(wireTimeout, "the stream over the limit refused", func() bool { return s.reset != nil || len(s.data) > 0 || s.ended }, nil)
	if len(s.data) > 0 || s.reset == nil || (*s.reset != http2.ErrCodeRefusedStream && *s.reset != http2.ErrCodeProtocol) {
		t.Errorf("stream %d over the limit %d: reset %v, %d bytes served; want RST_STREAM REFUSED_STREAM or PROTOCOL_ERROR and nothing served", open+1, limit, s.reset, len(s.data))
	}
}

// TestWireFramesReceiveWindows: the server gives back the windows of what it
// reads, padding included (§6.9.1): a client that honours the server's
// windows sends requests one byte per DATA frame, each padded with 255
// bytes, three times the server's largest window in all, and is answered.
func TestWireFramesReceiveWindows(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": outboundSnapshot(t)})
	c := dialRaw(t, ws.addr)
	var settled bool
	c.pump(wireTimeout, "the server's SETTINGS", func() bool { return settled }, func(f rawFrame) {
		settled = settled || f.Type == http2.FrameSettings && !f.Flags.Has(http2.FlagSettingsAck)
	})
	c.pumpFor(200*time.Millisecond, nil) // a WINDOW_UPDATE of the connection may follow
	window := max(c.sendConn, c.sendInitial)
	budget := 3 * window
	if budget > 16<<20 {
		t.Logf("the server's windows are %d bytes: checking 16 MiB only", window)
		budget = 16 << 20
	}
	id := c.open(grpcRequest(sotwPath))
	c.sendFlow(id, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}), 0)
	c.pump(wireTimeout, "the clusters", c.hasMessages(id, 1), nil)
	// Requests about an older response (ignored), each with 1 KiB of
	// node metadata, one byte per frame.
	stale := grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		"pad": structpb.NewStringValue(strings.Repeat("m", 1<<10))}}}, TypeUrl: resourcev3.ClusterType, ResponseNonce: "older"})
	var sent int64
	for sent < budget {
		for _, b := range stale {
			c.sendFlow(id, []byte{b}, 255)
		}
		sent += int64(len(stale)) * 257
	}
	t.Logf("sent %d flow-controlled bytes (%d of payload); the server's larger window was %d", sent, sent/257, window)
	c.sendFlow(id, grpcMessage(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType}), 255)
	c.pump(wireTimeout, "the listeners after the padded requests", c.hasMessages(id, 2), nil)
	if r := decodeSotW(t, grpcMessages(t, c.stream(id).data)[1]); r.GetTypeUrl() != resourcev3.ListenerType {
		t.Errorf("the second response is %v, want the listeners", r)
	}
}

// TestWireBadPreface: a connection that does not start with the HTTP/2
// client preface followed by SETTINGS (§3.4) — an HTTP/1.1 request, a
// damaged preface, a PING before SETTINGS — is closed, unserved.
func TestWireBadPreface(t *testing.T) {
	t.Parallel()
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")})
	var ping bytes.Buffer
	if err := http2.NewFramer(&ping, nil).WritePing(false, [8]byte{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, send string }{
		{"HTTP/1.1 request", "GET /healthz HTTP/1.1\r\nHost: detour-control-plane\r\n\r\n"},
		{"damaged preface", strings.Replace(http2.ClientPreface, "SM", "XX", 1)},
		{"PING before SETTINGS", http2.ClientPreface + ping.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conn, err := net.DialTimeout("tcp", ws.addr, wireTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write([]byte(tc.send)); err != nil {
				t.Fatal(err)
			}
			if err := conn.SetReadDeadline(time.Now().Add(wireTimeout)); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(conn)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("the connection is open %s later (read %q)", wireTimeout, got)
			}
			if bytes.HasPrefix(got, []byte("HTTP/1.1 2")) || bytes.HasPrefix(got, []byte("HTTP/1.0 2")) {
				t.Errorf("answered %q", got)
			}
		})
	}
}

// hpackInteger appends v as an HPACK integer with an n-bit prefix (RFC 7541
// §5.1), the prefix's other bits zero.
func hpackInteger(b []byte, n uint, v int) []byte {
	limit := 1<<n - 1
	if v < limit {
		return append(b, byte(v))
	}
	b = append(b, byte(limit))
	for v -= limit; v >= 128; v >>= 7 {
		b = append(b, byte(v%128+128))
	}
	return append(b, byte(v))
}

// hugeField is the HPACK encoding of the field "x-huge" with a value of n
// bytes: a literal never indexed, not Huffman-coded (RFC 7541 §6.2.3, §5.2).
func hugeField(n int) []byte {
	b := append([]byte{0x10, 6}, "x-huge"...)
	b = hpackInteger(b, 7, n)
	return append(b, bytes.Repeat([]byte{'h'}, n)...)
}

// TestWireHugeHeaderBlock: the server bounds what it reads of a request's
// header block, as it bounds a message (a proxy's request headers are well
// under 1 KiB): a header block of one 32 MiB field, in CONTINUATION frames,
// is refused — the connection closed, RST_STREAM, or an error response —
// and never served. A server that decodes it whole holds 32 MiB per such
// request (RFC 9113 §10.5.1: a server may refuse a header block it is not
// willing to handle).
func TestWireHugeHeaderBlock(t *testing.T) {
	t.Parallel()
	// The encoding is right: HPACK decodes a small one.
	fields, err := hpack.NewDecoder(4096, nil).DecodeFull(hugeField(1000))
	if err != nil || len(fields) != 1 || fields[0].Name != "x-huge" || len(fields[0].Value) != 1000 {
		t.Fatalf("hugeField(1000) decodes as %v, %v", fields, err)
	}
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")})
	c := dialRaw(t, ws.addr)
	c.pump(wireTimeout, "the server's SETTINGS", func() bool { return len(c.seen) > 0 }, nil)
	const huge = 32 << 20
	var sent int
	werr := c.tryWrite(func(fr *http2.Framer) error {
		block := append(c.headerBlock(grpcRequest(sotwPath)), hugeField(huge)...)
		for len(block) > 0 {
			n := min(len(block), 16384)
			var err error
			if sent == 0 {
				err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:n], EndHeaders: n == len(block)})
			} else {
				err = fr.WriteContinuation(1, n == len(block), block[:n])
			}
			if err != nil {
				return err
			}
			sent += n
			block = block[n:]
		}
		return nil
	})
	t.Logf("wrote %d bytes of the header block (%v)", sent, werr)
	if werr == nil {
		c.send(1, false, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}))
	}
	s := c.stream(1)
	c.pump(wireTimeout, "the server's answer to a 32 MiB header block", func() bool { return c.closed || s.reset != nil || s.ended || len(s.data) > 0 }, nil)
	t.Logf("answer: closed %v (GOAWAY %v), reset %v, headers %v, trailers %v", c.closed, c.goaway, s.reset, s.headers, s.trailers)
	switch {
	case len(s.data) > 0:
		t.Errorf("a request with a 32 MiB header block was served (%d bytes)", len(s.data))
	case s.ended && headerValue(s.headers, ":status") == "200":
		if code, msg := grpcStatus(t, s); code == 0 {
			t.Errorf("a request with a 32 MiB header block ended with grpc-status 0 %q", msg)
		}
	}
}

// TestWireGoneMidResponse: proxies that go away while their responses are
// held back by flow control — the connection closed, or the stream reset —
// are all forgotten within a few seconds (/debug/nodes), and the server
// still serves.
func TestWireGoneMidResponse(t *testing.T) {
	t.Parallel()
	const proxies = 20
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": bigSnapshot(t), "other": wireSnapshot(t, "blackhole")})
	req := grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ListenerType})
	conns := make([]*rawConn, proxies)
	for i := range conns {
		c := dialRaw(t, ws.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 16384})
		c.autoGive = false
		id := c.open(grpcRequest(sotwPath))
		c.send(id, false, req)
		conns[i] = c
	}
	waitDebug(t, ws.srv, "n", wireTimeout, fmt.Sprintf("%d streams", proxies), func(n NodeStatus) bool { return len(n.Streams) == proxies })
	for i, c := range conns {
		c.pump(wireTimeout, "the first DATA", func() bool { return len(c.stream(1).data) > 0 }, nil)
		if i%2 == 0 {
			c.conn.Close()
		} else {
			c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(1, http2.ErrCodeCancel) })
		}
	}
	waitDebug(t, ws.srv, "n", 5*time.Second, "no stream", func(n NodeStatus) bool { return n.NodeID == "n" && len(n.Streams) == 0 })

	c := dialRaw(t, ws.addr)
	id := c.open(grpcRequest(sotwPath))
	c.send(id, false, grpcMessage(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "other"}, TypeUrl: resourcev3.ClusterType}))
	c.pump(wireTimeout, "another proxy's clusters", c.hasMessages(id, 1), nil)
}
