package xds

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/detour-mesh/detour/internal/testpki"
)

// Tests of the transport (h2conn.go, h2write.go, h2frame.go, health.go)
// with gRPC-go's client, over loopback TCP.

// tcpServe serves srv on a loopback TCP listener until the test ends and
// returns its address; opts shape the listener (smallSendBuffers).
func tcpServe(t *testing.T, srv *Server, opts ...func(*net.ListenConfig)) string {
	t.Helper()
	var lc net.ListenConfig
	for _, o := range opts {
		o(&lc)
	}
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, srv, l)
	return l.Addr().String()
}

// smallSendBuffers gives tcpServe's connections 4 KiB socket send buffers:
// what the server cannot write stays in its queues, not in the kernel's.
func smallSendBuffers(lc *net.ListenConfig) {
	lc.Control = func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096) })
	}
}

// serveOn serves srv on l until the test ends; then it stops srv, and
// ServeXDS must return nil within wireTimeout.
func serveOn(t *testing.T, srv *Server, l net.Listener) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- srv.ServeXDS(l) }()
	t.Cleanup(func() {
		srv.Stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeXDS returned %v after Stop, want nil", err)
			}
		case <-time.After(wireTimeout):
			t.Errorf("ServeXDS did not return within %s of Stop", wireTimeout)
		}
	})
}

// dialPreface is a TCP connection to addr, closed when the test ends, that
// has sent the client preface and an empty SETTINGS frame; rcvbuf, when not
// 0, is its socket receive buffer.
func dialPreface(t *testing.T, addr string, rcvbuf int) net.Conn {
	t.Helper()
	var d net.Dialer
	if rcvbuf != 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf) })
		}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if _, err := nc.Write(append([]byte(http2.ClientPreface), appendFrameHeader(nil, 0, http2.FrameSettings, 0, 0)...)); err != nil {
		t.Fatal(err)
	}
	return nc
}

// dial is a gRPC-go client of addr.
func dial(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// bigSnapshotOf is a snapshot of one cluster of that many endpoints (10,000:
// a SotW response of about 400 KiB, six times a 64 KiB window), and the
// cluster's encoding.
func bigSnapshotOf(t *testing.T, endpoints int) (*Snapshot, string) {
	t.Helper()
	var sb SnapshotBuilder
	r := testCluster(t, "big", endpoints)
	s, err := sb.Snapshot(nil, []*Resource{r})
	if err != nil {
		t.Fatal(err)
	}
	return s, string(r.any.GetValue())
}

// TestTransportSmallWindows: a proxy with gRPC's smallest windows (64 KiB
// for the stream and the connection) that reads slowly receives a response
// several times its window, whole; a proxy that stops reading does not hold
// back the pushes to the others.
func TestTransportSmallWindows(t *testing.T) {
	t.Parallel()
	srv := NewServer(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	v1, want := bigSnapshotOf(t, 10000)
	v2, _ := bigSnapshotOf(t, 10001)
	nodes := map[string]*Snapshot{"slow": v1, "stalled": v1, "other": v1}
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: nodes}); err != nil {
		t.Fatal(err)
	}
	addr := tcpServe(t, srv)
	small := []grpc.DialOption{grpc.WithInitialWindowSize(64 << 10), grpc.WithInitialConnWindowSize(64 << 10)}
	open := func(node string) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		st := openSotW(ctx, t, discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, addr, small...)), &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resourcev3.ClusterType})
		return st
	}

	slow := open("slow")
	time.Sleep(300 * time.Millisecond) // the server is blocked by the window meanwhile
	r, err := slow.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(want) < 6*64<<10/2 {
		t.Fatalf("the response is %d bytes: not several windows", len(want))
	}
	if len(r.GetResources()) != 1 || string(r.GetResources()[0].GetValue()) != want {
		t.Fatalf("the slow proxy's response differs from the served cluster (%d resources)", len(r.GetResources()))
	}

	stalled := open("stalled") // never reads
	other := open("other")
	first, err := other.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = stalled
	waitFor(t, "the stalled proxy was sent its response", func() bool {
		for _, n := range srv.tracker.status() {
			if n.NodeID == "stalled" && n.Resources["clusters"].Sent != "" {
				return true
			}
		}
		return false
	})
	// Both are answered; the stalled proxy's push is stuck on its window.
	if err := other.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"slow": v1, "stalled": v2, "other": v2}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	next, err := other.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if next.GetVersionInfo() != v2.Versions().Clusters {
		t.Fatalf("other proxy got version %s, want %s", next.GetVersionInfo(), v2.Versions().Clusters)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the change took %v to reach a proxy while another stopped reading", d)
	}
}

// waitFor polls ok until it holds, failing the test after testTimeout.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTransportStatuses: what a gRPC-go client sees of a call the server
// refuses: an unknown method, a request above 4 MiB, a compressed request
// (the transport does not decompress) and an ADS request without a type.
func TestTransportStatuses(t *testing.T) {
	t.Parallel()
	srv := NewServer(Options{})
	addr := tcpServe(t, srv)
	conn := dial(t, addr, grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(16<<20)))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	err := conn.Invoke(ctx, "/envoy.service.discovery.v3.AggregatedDiscoveryService/FetchClusters", &discoveryv3.DiscoveryRequest{}, &discoveryv3.DiscoveryResponse{})
	if status.Code(err) != codes.Unimplemented || !strings.Contains(status.Convert(err).Message(), "FetchClusters") {
		t.Errorf("unknown method: %v, want Unimplemented naming it", err)
	}

	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	recvErr := func(send *discoveryv3.DiscoveryRequest) error {
		st, err := ads.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(send); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		_, err = st.Recv()
		return err
	}
	big, err := structpb.NewStruct(map[string]any{"pad": strings.Repeat("x", 5<<20)})
	if err != nil {
		t.Fatal(err)
	}
	err = recvErr(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n", Metadata: big}, TypeUrl: resourcev3.ClusterType})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("5 MiB request: %v, want ResourceExhausted", err)
	}
	err = recvErr(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("request without a type: %v, want InvalidArgument", err)
	}
	// The connection survived every refusal: a call still works.
	hc := healthpb.NewHealthClient(conn)
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health check after the refusals: %v", err)
	}
}

// TestTransportHealth: the gRPC health service on the xDS address, as
// gRPC-go's: NOT_SERVING until the first snapshots, then SERVING; unknown
// services NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch); Watch sends the
// current status, then each change.
func TestTransportHealth(t *testing.T) {
	t.Parallel()
	srv := NewServer(Options{})
	hc := healthpb.NewHealthClient(dial(t, tcpServe(t, srv)))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for _, service := range []string{"", adsService} {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("Check(%q) before snapshots: %v, %v; want NOT_SERVING", service, r.GetStatus(), err)
		}
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("Check of an unknown service: %v, want NotFound", err)
	}
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: adsService})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch's first status: %v, %v; want NOT_SERVING", r.GetStatus(), err)
	}
	unknown, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := unknown.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		t.Errorf("Watch of an unknown service: %v, %v; want SERVICE_UNKNOWN", r.GetStatus(), err)
	}
	before, _ := testSnapshots(t)
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": before}}); err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch after the snapshots: %v, %v; want SERVING", r.GetStatus(), err)
	}
	r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Check after snapshots: %v, %v; want SERVING", r.GetStatus(), err)
	}
}

// testServerTLS is a server certificate for 127.0.0.1 and the pool of the
// CA that signed it.
func testServerTLS(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	ca := testpki.New(t, "detour test")
	return &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "server", nil, x509.ExtKeyUsageServerAuth)}}, ca.Pool
}

// TestTransportTLSOffersH2: gRPC-go clients refuse a TLS server that does
// not negotiate "h2" (ALPN); the server offers it whatever the given config
// says, also from a GetConfigForClient (the reloading config of tls.go).
func TestTransportTLSOffersH2(t *testing.T) {
	t.Parallel()
	base, pool := testServerTLS(t)
	for _, tt := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"static", base},
		{"per-client", &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return base, nil }}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := NewServer(Options{TLS: tt.cfg})
			addr := tcpServe(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			conn := dial(t, addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
			r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("Check over TLS: %v, %v", r.GetStatus(), err)
			}
			if len(base.NextProtos) != 0 {
				t.Errorf("the caller's config was changed: NextProtos %q", base.NextProtos)
			}
		})
	}
}

// rawH2 is a client connection speaking HTTP/2 frames by hand.
type rawH2 struct {
	t  *testing.T
	nc net.Conn
}

func dialH2(t *testing.T, addr string) *rawH2 {
	t.Helper()
	nc := dialPreface(t, addr, 0)
	_ = nc.SetDeadline(time.Now().Add(testTimeout))
	return &rawH2{t: t, nc: nc}
}

func (c *rawH2) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// headers writes a HEADERS frame on stream 1 with flags, of fields (names
// and values) encoded by a new HPACK encoder.
func (c *rawH2) headers(flags uint8, fields [][2]string) {
	c.t.Helper()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	c.write(append(appendFrameHeader(nil, block.Len(), http2.FrameHeaders, flags, 1), block.Bytes()...))
}

// h2Post is the request headers of a gRPC call of path.
func h2Post(path string) [][2]string {
	return [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", path}, {":authority", "a"}, {"content-type", "application/grpc"}}
}

// next reads the next frame; ok is false once the connection ended.
func (c *rawH2) next() (typ http2.FrameType, flags uint8, id uint32, payload []byte, ok bool) {
	var h [frameHeaderLen]byte
	if _, err := io.ReadFull(c.nc, h[:]); err != nil {
		return 0, 0, 0, nil, false
	}
	payload = make([]byte, int(h[0])<<16|int(h[1])<<8|int(h[2]))
	if _, err := io.ReadFull(c.nc, payload); err != nil {
		return 0, 0, 0, nil, false
	}
	return http2.FrameType(h[3]), h[4], binary.BigEndian.Uint32(h[5:]) & 0x7fffffff, payload, true
}

// TestTransportKeepalive: a connection that sends nothing is pinged after
// the keepalive time, kept while it answers, and closed when it does not
// answer within the timeout — by the one sweeper of all connections.
func TestTransportKeepalive(t *testing.T) {
	t.Parallel()
	srv := NewServer(Options{})
	srv.transport.keepaliveTime, srv.transport.keepaliveTimeout = 200*time.Millisecond, 300*time.Millisecond
	addr := tcpServe(t, srv)
	c := dialH2(t, addr)
	start := time.Now()
	pings := 0
	for {
		typ, flags, _, payload, ok := c.next()
		if !ok {
			break
		}
		if typ != http2.FramePing || flags&flagAck != 0 {
			continue
		}
		pings++
		if pings == 1 {
			c.write(appendPing(nil, flagAck, [8]byte(payload))) // answered: kept
			start = time.Now()
		}
	}
	if pings < 2 {
		t.Fatalf("the connection was closed after %d keepalive pings, want one answered and one not", pings)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("closed %v after the answered ping: sooner than the keepalive time and timeout", d)
	}
}

// TestTransportPingFlood: more than two pings within 10 s with no data sent
// in between is answered with GOAWAY ENHANCE_YOUR_CALM, as gRPC-go's
// enforcement policy.
func TestTransportPingFlood(t *testing.T) {
	t.Parallel()
	c := dialH2(t, tcpServe(t, NewServer(Options{})))
	for range 4 {
		c.write(appendPing(nil, 0, [8]byte{1}))
	}
	acks := 0
	for {
		typ, flags, _, payload, ok := c.next()
		if !ok {
			t.Fatal("the connection ended without GOAWAY")
		}
		if typ == http2.FramePing && flags&flagAck != 0 {
			acks++
		}
		if typ == http2.FrameGoAway {
			if code := http2.ErrCode(binary.BigEndian.Uint32(payload[4:8])); code != http2.ErrCodeEnhanceYourCalm || acks != 3 {
				t.Errorf("GOAWAY %v after %d ping ACKs, want ENHANCE_YOUR_CALM after 3", code, acks)
			}
			return
		}
	}
}

// TestTransportTrailers: a refused call's status, as a raw HTTP/2 client
// reads it: a trailers-only response (":status" 200, content-type, then
// grpc-status and a percent-encoded grpc-message) ending the stream, and the
// stream reset with NO_ERROR since the client had not ended its side.
func TestTransportTrailers(t *testing.T) {
	t.Parallel()
	c := dialH2(t, tcpServe(t, NewServer(Options{})))
	c.headers(flagEndHeaders, h2Post("/x.Y/Z\u00e9%"))
	var fields []hpack.HeaderField
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { fields = append(fields, f) })
	for {
		typ, flags, id, payload, ok := c.next()
		if !ok {
			t.Fatal("the connection ended")
		}
		if typ == http2.FrameHeaders && id == 1 {
			if flags&flagEndStream == 0 || flags&flagEndHeaders == 0 {
				t.Errorf("trailers-only HEADERS flags %#x, want END_STREAM|END_HEADERS", flags)
			}
			if _, err := dec.Write(payload); err != nil {
				t.Fatal(err)
			}
		}
		if typ == http2.FrameRSTStream && id == 1 {
			if code := http2.ErrCode(binary.BigEndian.Uint32(payload)); code != http2.ErrCodeNo || fields == nil {
				t.Errorf("RST_STREAM %v (after trailers: %v), want NO_ERROR after the trailers", code, fields != nil)
			}
			break
		}
	}
	want := []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"},
		{Name: "grpc-status", Value: "12"}, {Name: "grpc-message", Value: "unknown method /x.Y/Z%C3%A9%25"}}
	if len(fields) != len(want) {
		t.Fatalf("trailers %v, want %v", fields, want)
	}
	for i := range want {
		if fields[i].Name != want[i].Name || fields[i].Value != want[i].Value {
			t.Errorf("trailer %d: %s: %q, want %s: %q", i, fields[i].Name, fields[i].Value, want[i].Name, want[i].Value)
		}
	}
}

// TestTransportStopEndsStreams: Server.Stop closes every connection at once:
// streams end on the client and the tracker forgets them.
func TestTransportStopEndsStreams(t *testing.T) {
	t.Parallel()
	before, _ := testSnapshots(t)
	srv, ctx := holding(t, before)
	st := openSotW(ctx, t, discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, tcpServe(t, srv))), &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if _, err := st.Recv(); err == nil {
		t.Fatal("the stream got a response after Stop")
	}
	waitFor(t, "the tracker forgot the stream", func() bool {
		for _, n := range srv.tracker.status() {
			if len(n.Streams) > 0 {
				return false
			}
		}
		return true
	})
}

// TestTransportSendsEncodingsAsTheyAre: a resource's encoding reaches the
// proxy byte for byte, SotW and delta (servingCache serves each resource's
// encoding once for every proxy; nothing re-marshals it on the way out).
func TestTransportSendsEncodingsAsTheyAre(t *testing.T) {
	t.Parallel()
	res := nonCanonicalCluster()
	var sb SnapshotBuilder
	snap, err := sb.Snapshot(nil, []*Resource{NewResource("a", resourcev3.ClusterType, res.GetValue())})
	if err != nil {
		t.Fatal(err)
	}
	_, client, ctx := serving(t, snap)
	sotw := openSotW(ctx, t, client, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	r, err := sotw.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetResources()) != 1 || !bytes.Equal(r.GetResources()[0].GetValue(), res.GetValue()) {
		t.Errorf("SotW: the resource's bytes changed on the way out")
	}
	delta := openDelta(ctx, t, client, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	d, err := delta.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(d.GetResources()) != 1 || !bytes.Equal(d.GetResources()[0].GetResource().GetValue(), res.GetValue()) {
		t.Errorf("delta: the resource's bytes changed on the way out")
	}
}

// TestTransportReassemblesRequests: a request spanning many DATA frames (a
// 300 KiB node, from gRPC-go's client) and one cut anywhere, its prefix
// included (a raw client, one byte per frame), are each read as one message.
func TestTransportReassemblesRequests(t *testing.T) {
	t.Parallel()
	before, _ := testSnapshots(t)
	srv, client, ctx := serving(t, before)
	big, err := structpb.NewStruct(map[string]any{"pad": strings.Repeat("x", 300<<10)})
	if err != nil {
		t.Fatal(err)
	}
	st := openSotW(ctx, t, client, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n", Metadata: big}, TypeUrl: resourcev3.ClusterType})
	if r, err := st.Recv(); err != nil || r.GetVersionInfo() != before.Versions().Clusters {
		t.Fatalf("response to a 300 KiB request: %v, %v", r.GetVersionInfo(), err)
	}

	c := dialH2(t, tcpServe(t, srv))
	c.headers(flagEndHeaders, h2Post("/"+healthService+"/Check"))
	msg := []byte{0, 0, 0, 0, byte(len(adsService) + 2), 0x0a, byte(len(adsService))}
	msg = append(msg, adsService...)
	for i, b := range msg {
		flags := uint8(0)
		if i == len(msg)-1 {
			flags = flagEndStream
		}
		c.write(append(appendFrameHeader(nil, 1, http2.FrameData, flags, 1), b))
	}
	for {
		typ, _, id, payload, ok := c.next()
		if !ok {
			t.Fatal("the connection ended before the response")
		}
		if typ == http2.FrameData && id == 1 {
			// HealthCheckResponse{status: SERVING}: field 1, varint 1.
			if want := []byte{0, 0, 0, 0, 2, 0x08, 1}; !bytes.Equal(payload, want) {
				t.Fatalf("response %x, want %x (SERVING)", payload, want)
			}
			return
		}
		if typ == http2.FrameHeaders && id == 1 && len(payload) > len(responseHeaders) {
			t.Fatalf("the call ended without a response: %q", payload)
		}
	}
}

// TestTransportMalformedRequests: a malformed request (RFC 9113 §8.2, §8.3)
// is reset with PROTOCOL_ERROR, and no call starts.
func TestTransportMalformedRequests(t *testing.T) {
	t.Parallel()
	addr := tcpServe(t, NewServer(Options{}))
	path := "/" + healthService + "/Check"
	for _, tt := range []struct {
		name   string
		fields [][2]string
	}{
		{"upper-case name", [][2]string{{":method", "POST"}, {":path", path}, {"content-type", "application/grpc"}, {"X-A", "1"}}},
		{"repeated :path", [][2]string{{":method", "POST"}, {":path", path}, {":path", path}, {"content-type", "application/grpc"}}},
		{"unknown pseudo-header", [][2]string{{":method", "POST"}, {":path", path}, {":x", "y"}, {"content-type", "application/grpc"}}},
		{"pseudo-header after a regular one", [][2]string{{":method", "POST"}, {"content-type", "application/grpc"}, {":path", path}}},
		{"connection header", [][2]string{{":method", "POST"}, {":path", path}, {"content-type", "application/grpc"}, {"connection", "keep-alive"}}},
		{"te not trailers", [][2]string{{":method", "POST"}, {":path", path}, {"content-type", "application/grpc"}, {"te", "gzip"}}},
		{"GET", [][2]string{{":method", "GET"}, {":path", path}, {"content-type", "application/grpc"}}},
		{"no :path", [][2]string{{":method", "POST"}, {"content-type", "application/grpc"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := dialH2(t, addr)
			c.headers(flagEndHeaders|flagEndStream, tt.fields)
			for {
				typ, _, id, payload, ok := c.next()
				if !ok {
					t.Fatal("the connection ended without RST_STREAM")
				}
				if id != 1 {
					continue
				}
				if typ != http2.FrameRSTStream {
					t.Fatalf("frame %d on the stream, want RST_STREAM", typ)
				}
				if code := http2.ErrCode(binary.BigEndian.Uint32(payload)); code != http2.ErrCodeProtocol {
					t.Errorf("RST_STREAM %v, want PROTOCOL_ERROR", code)
				}
				return
			}
		})
	}
}

// TestTransportEndedCallFinishesWriting: a call that ended while its
// response waits for the client's stream window still gets that window (the
// client's WINDOW_UPDATE), then its response and its trailers.
func TestTransportEndedCallFinishesWriting(t *testing.T) {
	t.Parallel()
	c := dialH2(t, tcpServe(t, NewServer(Options{})))
	settings := appendSetting(nil, http2.SettingInitialWindowSize, 3) // less than the 7 bytes of a Check response
	c.write(append(appendFrameHeader(nil, len(settings), http2.FrameSettings, 0, 0), settings...))
	c.headers(flagEndHeaders, h2Post("/"+healthService+"/Check"))
	c.write(append(appendFrameHeader(nil, 5, http2.FrameData, flagEndStream, 1), 0, 0, 0, 0, 0))
	var data []byte
	updated := false
	for {
		typ, flags, id, payload, ok := c.next()
		if !ok {
			t.Fatalf("the connection ended after %d bytes of the response", len(data))
		}
		if id != 1 {
			continue
		}
		if typ == http2.FrameData {
			data = append(data, payload...)
			if !updated {
				updated = true
				c.write(appendWindowUpdate(nil, 1, 100))
			}
		}
		if typ == http2.FrameHeaders && flags&flagEndStream != 0 {
			break
		}
	}
	// HealthCheckResponse{status: NOT_SERVING}: field 1, varint 2.
	if want := []byte{0, 0, 0, 0, 2, 0x08, 2}; !bytes.Equal(data, want) {
		t.Errorf("response %x, want %x", data, want)
	}
}

// failingListener returns errs from its first Accepts, then accepts from
// the listener it wraps.
type failingListener struct {
	net.Listener
	errs chan error
}

func (l failingListener) Accept() (net.Conn, error) {
	select {
	case err := <-l.errs:
		return nil, err
	default:
		return l.Listener.Accept()
	}
}

// TestTransportKeepsAcceptingAfterEMFILE: running out of file descriptors
// (EMFILE, ENFILE: a burst of proxies reconnecting) does not end the ADS
// server: it backs off and serves the proxies that come next, as gRPC-go's
// server did.
func TestTransportKeepsAcceptingAfterEMFILE(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE} {
		errs <- &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", e)}
	}
	srv := NewServer(Options{})
	served := make(chan error, 1)
	go func() { served <- srv.ServeXDS(failingListener{l, errs}) }()
	defer func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("ServeXDS after Stop: %v", err)
		}
	}()
	hc := healthpb.NewHealthClient(dial(t, l.Addr().String()))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Check after EMFILE and ENFILE from accept: %v, %v; want NOT_SERVING (served)", r.GetStatus(), err)
	}
	select {
	case err := <-served:
		t.Fatalf("ServeXDS ended: %v", err)
	default:
	}
}
