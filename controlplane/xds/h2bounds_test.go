package xds

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Tests of what a peer can make the server hold (h2conn.go, h2write.go):
// each floods one connection and checks what the server keeps unwritten
// and how the connection ends.

// unwritten is what srv holds for its connections' peers, unwritten: bytes
// of control frames and of queued responses, and the streams with
// something queued; closing is true once a connection has GOAWAY queued.
func unwritten(srv *Server) (n, streams int, closing bool) {
	srv.transport.mu.Lock()
	defer srv.transport.mu.Unlock()
	for c := range srv.transport.conns {
		c.wmu.Lock()
		n += len(c.w.ctrl)
		streams += len(c.w.ready)
		closing = closing || c.w.closing
		for _, st := range c.w.ready {
			for _, it := range st.out {
				n += len(it.block)
				if it.msg != nil {
					n += it.msg.left
				}
			}
		}
		c.wmu.Unlock()
	}
	return n, streams, closing
}

// dialNoRead is a connection whose client does not read (a 4 KiB receive
// buffer) until the test reads it.
func dialNoRead(t *testing.T, addr string) net.Conn {
	t.Helper()
	return dialPreface(t, addr, 4096)
}

// flood writes wire times times on nc without reading, and watches srv
// until it queues GOAWAY (or 5 s pass): it returns the most srv held
// unwritten meanwhile.
func flood(t *testing.T, srv *Server, nc net.Conn, wire []byte, times int) (peak, peakStreams int, closing bool) {
	t.Helper()
	go func() {
		_ = nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		for range times {
			if _, err := nc.Write(wire); err != nil {
				return // the server closed first
			}
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !closing; time.Sleep(5 * time.Millisecond) {
		var n, s int
		n, s, closing = unwritten(srv)
		peak, peakStreams = max(peak, n), max(peakStreams, s)
	}
	return peak, peakStreams, closing
}

// goAwayCode reads nc's frames until GOAWAY and returns its code.
func goAwayCode(t *testing.T, nc net.Conn) (http2.ErrCode, bool) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(testTimeout))
	var h [frameHeaderLen]byte
	for {
		if _, err := io.ReadFull(nc, h[:]); err != nil {
			return 0, false
		}
		p := make([]byte, int(h[0])<<16|int(h[1])<<8|int(h[2]))
		if _, err := io.ReadFull(nc, p); err != nil {
			return 0, false
		}
		if http2.FrameType(h[3]) == http2.FrameGoAway && len(p) >= 8 {
			return http2.ErrCode(binary.BigEndian.Uint32(p[4:8])), true
		}
	}
}

// TestTransportUnreadControlFrames: a peer that sends SETTINGS (each asks
// for an ACK) and never reads gets GOAWAY ENHANCE_YOUR_CALM once 64 KiB of
// ACKs wait unwritten; the server holds no more than that.
func TestTransportUnreadControlFrames(t *testing.T) {
	t.Parallel()
	srv := NewServer(Options{})
	nc := dialNoRead(t, tcpServe(t, srv, smallSendBuffers))
	frame := appendFrameHeader(nil, 0, http2.FrameSettings, 0, 0)
	peak, _, closing := flood(t, srv, nc, bytes.Repeat(frame, 1<<20/len(frame)), 1)
	t.Logf("the server held at most %d bytes unwritten", peak)
	if !closing {
		t.Fatalf("no GOAWAY after 1 MiB of SETTINGS unanswered; %d bytes of ACKs held", peak)
	}
	if peak > maxQueuedControl+256 { // the last ACK and the GOAWAY
		t.Errorf("the server held %d bytes of control frames, want at most %d", peak, maxQueuedControl)
	}
	if code, ok := goAwayCode(t, nc); !ok || code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v (read: %v), want ENHANCE_YOUR_CALM", code, ok)
	}
}

// TestTransportUnreadTrailers: a peer that opens calls ended at once (an
// unknown method, its 3.9 KB path indexed in the peer's HPACK table: 3
// bytes on the wire, 3.9 KB of grpc-message) and never reads has at most
// SETTINGS_MAX_CONCURRENT_STREAMS of them queued: the streams it opens past
// that are refused, and once their RST_STREAMs pass 64 KiB unread it gets
// GOAWAY ENHANCE_YOUR_CALM.
func TestTransportUnreadTrailers(t *testing.T) {
	t.Parallel()
	srv := NewServer(Options{})
	nc := dialNoRead(t, tcpServe(t, srv, smallSendBuffers))
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	path := "/" + strings.Repeat("a", 3900)
	var wire []byte
	for i := range 10000 {
		block.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":path", path}, {"content-type", "application/grpc"}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		wire = appendFrameHeader(wire, block.Len(), http2.FrameHeaders, flagEndHeaders|flagEndStream, uint32(2*i+1))
		wire = append(wire, block.Bytes()...)
	}
	peak, streams, closing := flood(t, srv, nc, wire, 1)
	t.Logf("client sent %d KiB; the server held at most %d bytes unwritten in %d streams", len(wire)>>10, peak, streams)
	if streams > maxStreams {
		t.Errorf("%d streams queued for a peer that does not read, want at most %d", streams, maxStreams)
	}
	if limit := maxStreams*4<<10 + maxQueuedControl + rstFrameLen; peak > limit {
		t.Errorf("the server held %d bytes unwritten, want at most %d", peak, limit)
	}
	if !closing {
		t.Fatal("no GOAWAY after 10,000 streams refused unread")
	}
	if code, ok := goAwayCode(t, nc); !ok || code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v (read: %v), want ENHANCE_YOUR_CALM", code, ok)
	}
}

// adsOpen is the HEADERS of an ADS SotW call on stream id, and a DATA frame
// of its request req.
func adsOpen(enc *hpack.Encoder, block *bytes.Buffer, id uint32) []byte {
	block.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":path", "/" + adsService + "/StreamAggregatedResources"}, {"content-type", "application/grpc"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return append(appendFrameHeader(nil, block.Len(), http2.FrameHeaders, flagEndHeaders, id), block.Bytes()...)
}

func adsData(t *testing.T, id uint32, req *discoveryv3.DiscoveryRequest) []byte {
	t.Helper()
	msg := grpcMessage(t, req)
	return append(appendFrameHeader(nil, len(msg), http2.FrameData, 0, id), msg...)
}

// lastNonce is the nonce of the last response of typeURL sent to node.
func lastNonce(srv *Server, node, typeURL string) string {
	srv.tracker.mu.Lock()
	defer srv.tracker.mu.Unlock()
	for _, s := range srv.tracker.streams {
		if s.node == node {
			if r := s.lastSent(typeURL); r != nil {
				return r.nonce
			}
		}
	}
	return ""
}

// TestTransportUnreadResponsesReplaced: a SotW proxy that does not read
// but asks again and again (each request carries the last nonce — they
// count from 1 — and a stale version, so the cache answers at once) has at
// most two responses of the type queued: one being written and the newest,
// which replaces the one before it; and the push workers do not wait for it.
func TestTransportUnreadResponsesReplaced(t *testing.T) {
	t.Parallel()
	srv := NewServer(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	v1, want := bigSnapshotOf(t, 10000) // a response of about 260 KiB
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": v1}}); err != nil {
		t.Fatal(err)
	}
	nc := dialNoRead(t, tcpServe(t, srv, smallSendBuffers))
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	if _, err := nc.Write(adsOpen(enc, &block, 1)); err != nil {
		t.Fatal(err)
	}
	const requests = 30
	var rounds []time.Duration // from a request to its response sent
	for i := 1; i <= requests; i++ {
		start := time.Now()
		req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}
		if i > 1 {
			req.ResponseNonce = strconv.Itoa(i - 1)
		}
		if _, err := nc.Write(adsData(t, 1, req)); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); lastNonce(srv, "n", resourcev3.ClusterType) != strconv.Itoa(i); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("response %d not sent within 5 s (last: %q)", i, lastNonce(srv, "n", resourcev3.ClusterType))
			}
		}
		rounds = append(rounds, time.Since(start))
	}
	n, _, _ := unwritten(srv)
	// A push worker does not wait (pushMaxWait, 100 ms) for a proxy that is
	// behind on its reads: after the first, most responses take less.
	later := slices.Clone(rounds[1:])
	slices.Sort(later)
	median := later[len(later)/2]
	t.Logf("%d responses of %d KiB sent (median %v after the first); the server holds %d KiB unwritten", requests, len(want)>>10, median, n>>10)
	if median >= pushMaxWait {
		t.Errorf("a response took %v (median): push workers waited for a proxy that does not read", median)
	}
	if limit := 2*len(want) + 64<<10; n > limit {
		t.Errorf("the server holds %d KiB of responses for a proxy that does not read, want at most %d KiB (two)", n>>10, limit>>10)
	}
}

// TestTransportHeaderBlockLimit: the server advertises
// SETTINGS_MAX_HEADER_LIST_SIZE 64 KiB, and a request whose header block
// goes on past it (HEADERS, then CONTINUATION frames without END_HEADERS)
// ends the connection with GOAWAY ENHANCE_YOUR_CALM.
func TestTransportHeaderBlockLimit(t *testing.T) {
	t.Parallel()
	c := dialH2(t, tcpServe(t, NewServer(Options{})))
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "POST"}, {":path", "/" + healthService + "/Check"}, {"content-type", "application/grpc"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	c.write(appendFrameHeader(nil, block.Len(), http2.FrameHeaders, 0, 1))
	c.write(block.Bytes())
	pad := strings.Repeat("p", 1000)
	go func() { // 200 KiB of header fields, 8 KiB a frame, never ended
		for range 25 {
			block.Reset()
			for range 8 {
				_ = enc.WriteField(hpack.HeaderField{Name: "x-pad", Value: pad, Sensitive: true})
			}
			if _, err := c.nc.Write(append(appendFrameHeader(nil, block.Len(), http2.FrameContinuation, 0, 1), block.Bytes()...)); err != nil {
				return
			}
		}
	}()
	_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	advertised := uint32(0)
	for {
		typ, flags, _, payload, ok := c.next()
		if !ok {
			t.Fatal("no GOAWAY for a header block of 200 KiB")
		}
		if typ == http2.FrameSettings && flags&flagAck == 0 {
			for p := payload; len(p) >= 6; p = p[6:] {
				if http2.SettingID(binary.BigEndian.Uint16(p)) == http2.SettingMaxHeaderListSize {
					advertised = binary.BigEndian.Uint32(p[2:])
				}
			}
		}
		if typ == http2.FrameGoAway {
			if code := http2.ErrCode(binary.BigEndian.Uint32(payload[4:8])); code != http2.ErrCodeEnhanceYourCalm {
				t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", code)
			}
			break
		}
	}
	if advertised != 64<<10 {
		t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE %d, want 65536", advertised)
	}
}

// TestTransportPartialMessagesLimit: the request messages being received
// on a connection (each up to 4 MiB, its frames arriving as the windows
// allow) are bounded together (8 MiB; 256 KiB here): the stream whose data
// passes the bound ends RESOURCE_EXHAUSTED, the others go on.
func TestTransportPartialMessagesLimit(t *testing.T) {
	t.Parallel()
	srv := NewServer(Options{})
	srv.transport.maxPartial = 256 << 10
	c := dialH2(t, tcpServe(t, srv))
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	part := make([]byte, 100<<10)                // of a message of 1 MiB
	binary.BigEndian.PutUint32(part[1:5], 1<<20) // the prefix: uncompressed, 1 MiB
	for _, id := range []uint32{1, 3, 5} {
		c.write(adsOpen(enc, &block, id))
		for p := part; len(p) > 0; p = p[min(len(p), maxReadFrame):] {
			c.write(append(appendFrameHeader(nil, min(len(p), maxReadFrame), http2.FrameData, 0, id), p[:min(len(p), maxReadFrame)]...))
		}
	}
	var fields []hpack.HeaderField
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { fields = append(fields, f) })
	_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		typ, _, id, payload, ok := c.next()
		if !ok {
			t.Fatal("no stream ended with 300 KiB of partial messages received, bound 256 KiB")
		}
		if typ == http2.FrameRSTStream && id != 5 {
			t.Errorf("stream %d reset, want only stream 5 ended", id)
		}
		if typ != http2.FrameHeaders {
			continue
		}
		fields = fields[:0]
		if _, err := dec.Write(payload); err != nil {
			t.Fatal(err)
		}
		if id != 5 {
			t.Fatalf("stream %d ended, want stream 5 (the one past the bound): %v", id, fields)
		}
		for _, f := range fields {
			if f.Name == "grpc-status" && f.Value != "8" {
				t.Errorf("grpc-status %s, want 8 (RESOURCE_EXHAUSTED): %v", f.Value, fields)
			}
			if f.Name == "grpc-status" {
				return
			}
		}
	}
}
