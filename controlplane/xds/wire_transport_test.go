package xds

// The wire suite's third client: x/net/http2's Transport (the HTTP/2 client
// of net/http), plain-text h2c through AllowHTTP and a plain DialTLSContext,
// or TLS; a bidirectional gRPC stream is a POST whose body is an io.Pipe.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/net/http2"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// h2cTransport is an HTTP/2 client over plain TCP (h2c, prior knowledge).
func h2cTransport(t *testing.T) *http2.Transport {
	t.Helper()
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// grpcPost is a gRPC request of path with body.
func grpcPost(ctx context.Context, t *testing.T, scheme, addr, path string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, scheme+"://"+addr+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	return req
}

// readMessage reads one gRPC message from r, failing after d.
func readMessage(t *testing.T, r io.Reader, d time.Duration, what string) []byte {
	t.Helper()
	type result struct {
		m   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var prefix [5]byte
		if _, err := io.ReadFull(r, prefix[:]); err != nil {
			ch <- result{err: fmt.Errorf("message prefix: %w", err)}
			return
		}
		if prefix[0] != 0 {
			ch <- result{err: fmt.Errorf("compressed flag %d, and no encoding was asked for", prefix[0])}
			return
		}
		m := make([]byte, binary.BigEndian.Uint32(prefix[1:]))
		_, err := io.ReadFull(r, m)
		ch <- result{m, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			t.Fatalf("%s: %v", what, res.err)
		}
		return res.m
	case <-time.After(d):
		t.Fatalf("%s: no message within %s", what, d)
	}
	return nil
}

// grpcStatusOf is the grpc-status of a finished response: in its trailers,
// or in its headers for a trailers-only response.
func grpcStatusOf(resp *http.Response) string {
	if v := resp.Trailer.Get("Grpc-Status"); v != "" {
		return v
	}
	return resp.Header.Get("Grpc-Status")
}

// TestWireHTTP2TransportADS: net/http's HTTP/2 client, as a SotW proxy on
// one bidirectional stream: its clusters, a change after its ACK, and
// grpc-status 0 once it ends its side.
func TestWireHTTP2TransportADS(t *testing.T) {
	t.Parallel()
	before := wireSnapshot(t, "blackhole", "web")
	after := wireSnapshot(t, "blackhole")
	ws := startWire(t, Options{}, map[string]*Snapshot{"n": before})
	ctx := wireContext(t)
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	write := func(m proto.Message) {
		t.Helper()
		b := grpcMessage(t, m)
		go func() { _, _ = pw.Write(b) }() // the transport reads the body once the stream is open
	}
	write(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	resp, err := h2cTransport(t).RoundTrip(grpcPost(ctx, t, "http", ws.addr, sotwPath, pr))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/grpc") || resp.ProtoMajor != 2 {
		t.Fatalf("response %s %s content-type %q, want HTTP/2.0 200 application/grpc", resp.Proto, resp.Status, resp.Header.Get("Content-Type"))
	}
	first := decodeSotW(t, readMessage(t, resp.Body, wireTimeout, "the clusters"))
	if first.GetVersionInfo() != before.Versions().Clusters || len(first.GetResources()) != 2 {
		t.Fatalf("clusters: version %q, %d resources; want %q, 2", first.GetVersionInfo(), len(first.GetResources()), before.Versions().Clusters)
	}
	write(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()})
	waitDebug(t, ws.srv, "n", wireTimeout, "clusters in sync", func(n NodeStatus) bool { return n.Resources["clusters"].InSync })
	setWire(t, ws.srv, map[string]*Snapshot{"n": after})
	change := decodeSotW(t, readMessage(t, resp.Body, wireTimeout, "the change"))
	if change.GetVersionInfo() != after.Versions().Clusters || len(change.GetResources()) != 1 {
		t.Fatalf("change: version %q, %d resources; want %q, 1", change.GetVersionInfo(), len(change.GetResources()), after.Versions().Clusters)
	}

	pw.Close()
	rest := make(chan error, 1)
	go func() {
		b, err := io.ReadAll(resp.Body)
		if err == nil && len(b) > 0 {
			err = fmt.Errorf("%d more bytes", len(b))
		}
		rest <- err
	}()
	select {
	case err := <-rest:
		if err != nil {
			t.Fatalf("the end of the response body: %v", err)
		}
	case <-time.After(wireTimeout):
		t.Fatalf("the response did not end within %s of the request's end", wireTimeout)
	}
	if got := grpcStatusOf(resp); got != "0" {
		t.Errorf("grpc-status %q (trailers %v), want 0", got, resp.Trailer)
	}
}

// TestWireHTTP2TransportUnary: net/http's HTTP/2 client calls the health
// service (unary: one message, then the end of the request) in plain text
// and over TLS (where the client requires ALPN h2), and an unknown method
// answers grpc-status 12.
func TestWireHTTP2TransportUnary(t *testing.T) {
	t.Parallel()
	pki := newWirePKI(t)
	nodes := map[string]*Snapshot{"n": wireSnapshot(t, "blackhole")}
	plain := startWire(t, Options{}, nodes)
	secure := startWire(t, Options{TLS: &tls.Config{Certificates: []tls.Certificate{pki.server}}}, nodes)
	ctx := wireContext(t)
	tlsTransport := &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool}}
	t.Cleanup(tlsTransport.CloseIdleConnections)
	body := func() io.Reader {
		return strings.NewReader(string(grpcMessage(t, &healthpb.HealthCheckRequest{Service: wireADS})))
	}
	for _, tc := range []struct {
		name   string
		rt     http.RoundTripper
		scheme string
		addr   string
	}{
		{"h2c", h2cTransport(t), "http", plain.addr},
		{"tls", tlsTransport, "https", secure.addr},
	} {
		resp, err := tc.rt.RoundTrip(grpcPost(ctx, t, tc.scheme, tc.addr, "/grpc.health.v1.Health/Check", body()))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s", tc.name, resp.Status)
		}
		var r healthpb.HealthCheckResponse
		if err := proto.Unmarshal(readMessage(t, resp.Body, wireTimeout, tc.name+" health Check"), &r); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%s: health Check: %v, %v; want SERVING", tc.name, &r, err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Errorf("%s: the rest of the body: %v", tc.name, err)
		}
		resp.Body.Close()
		if got := grpcStatusOf(resp); got != "0" {
			t.Errorf("%s: health Check grpc-status %q, want 0", tc.name, got)
		}

		resp, err = tc.rt.RoundTrip(grpcPost(ctx, t, tc.scheme, tc.addr, "/grpc.health.v1.Health/NoSuchMethod", body()))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Errorf("%s: unknown method's body: %v", tc.name, err)
		}
		resp.Body.Close()
		if got := grpcStatusOf(resp); resp.StatusCode != http.StatusOK || got != "12" {
			t.Errorf("%s: unknown method: %s grpc-status %q, want 200 and 12", tc.name, resp.Status, got)
		}
	}
}
