package xds

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestADSFailedPushEndsTheStream: a push that cannot be marshalled (here a
// resource's type URL that is not UTF-8, which proto3 refuses) ends the
// stream with Internal and what failed, as gRPC-go's server did: the proxy
// reconnects. Kept open, the stream would wedge the type: the response's
// nonce was never sent, so every later ACK of the type is stale. The proxy's
// next stream on the same connection is served.
func TestADSFailedPushEndsTheStream(t *testing.T) {
	t.Parallel()
	before, _ := testSnapshots(t)
	srv, client, ctx := serving(t, before)
	st := openSotW(ctx, t, client, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	first, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": unmarshallable(t)}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if s := status.Convert(err); s.Code() != codes.Internal || !strings.Contains(s.Message(), "marshal response") || !strings.Contains(s.Message(), "UTF-8") {
		t.Fatalf("after a push that cannot be marshalled: response %v, error %v; want the stream ended with Internal naming the marshal error", r, err)
	}

	// The proxy reconnects and is served once the configuration is valid.
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": before}}); err != nil {
		t.Fatal(err)
	}
	again := openSotW(ctx, t, client, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	if r, err := again.Recv(); err != nil || r.GetVersionInfo() != before.Versions().Clusters {
		t.Fatalf("the proxy's next stream: %v, %v; want version %s", r, err, before.Versions().Clusters)
	}
	// Its failed stream is forgotten: one stream of node n is connected.
	deadline := time.Now().Add(testTimeout)
	for {
		got := srv.tracker.status()
		if len(got) == 1 && len(got[0].Streams) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/debug/nodes: %+v, want node n with one stream", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestADSFailedPushForgetsTheStream: the stream of a failed push is
// forgotten (its watches, its place in /debug/nodes and among the
// connection's streams) even when the client sends nothing more on it, as
// nghttp2 does after the server's RST_STREAM: at the connection's next frame.
func TestADSFailedPushForgetsTheStream(t *testing.T) {
	t.Parallel()
	before, _ := testSnapshots(t)
	srv, ctx := holding(t, before)
	c := dialH2(t, tcpServe(t, srv))
	c.headers(flagEndHeaders, h2Post("/"+adsService+"/StreamAggregatedResources"))
	send := func(req *discoveryv3.DiscoveryRequest) { c.write(adsData(t, 1, req)) }
	send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	var data []byte
	for len(data) < 5 || len(data) < 5+int(binary.BigEndian.Uint32(data[1:5])) {
		typ, _, id, payload, ok := c.next()
		if !ok {
			t.Fatal("the connection ended before the first response")
		}
		if typ == http2.FrameData && id == 1 {
			data = append(data, payload...)
		}
	}
	var first discoveryv3.DiscoveryResponse
	if err := proto.Unmarshal(data[5:], &first); err != nil {
		t.Fatal(err)
	}

	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": unmarshallable(t)}}); err != nil {
		t.Fatal(err)
	}
	send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()})
	dec := hpack.NewDecoder(4096, nil)
	for rst := false; !rst; {
		typ, _, id, payload, ok := c.next()
		if !ok {
			t.Fatal("the connection ended before the stream")
		}
		switch {
		case typ == http2.FrameHeaders && id == 1:
			fields, err := dec.DecodeFull(payload)
			if err != nil {
				t.Fatal(err)
			}
			if !hasField(fields, "grpc-status", "13") {
				t.Errorf("trailers %v, want grpc-status 13 (Internal)", fields)
			}
		case typ == http2.FrameRSTStream && id == 1:
			rst = true
		}
	}
	// The client sends nothing more on the stream; a PING is read.
	c.write(appendPing(nil, 0, [8]byte{7}))
	for {
		typ, flags, _, _, ok := c.next()
		if !ok {
			t.Fatal("the connection ended before the PING's ACK")
		}
		if typ == http2.FramePing && flags&flagAck != 0 {
			break
		}
	}
	if got := srv.tracker.status(); len(got) != 0 && len(got[0].Streams) != 0 {
		t.Errorf("/debug/nodes after the failed stream's end: %+v, want no stream", got)
	}
}

// failingResponse is a cache response whose GetDiscoveryResponse fails.
type failingResponse struct{ cachev3.Response }

func (failingResponse) GetDiscoveryResponse() (*discoveryv3.DiscoveryResponse, error) {
	return nil, errors.New("resources of an unknown kind")
}

// abortRecorder is a stream's sender that records how its call was ended.
type abortRecorder struct{ aborted chan error }

func (r abortRecorder) SendMsg(any) error { return nil }
func (r abortRecorder) abort(err error)   { r.aborted <- err }

// TestADSPushOfAFailingResponseEndsTheStream: a response the cache cannot
// build (GetDiscoveryResponse fails) ends the stream with Internal, naming
// the type and the error.
func TestADSPushOfAFailingResponseEndsTheStream(t *testing.T) {
	t.Parallel()
	rec := abortRecorder{aborted: make(chan error, 1)}
	s := &adsStream{ads: &adsServer{pushes: pushQueue{max: 1}}, send: rec}
	ts := &typeStream{url: resourcev3.ClusterType}
	s.types = []*typeStream{ts}
	s.put(pendingResponse{ts: ts, sotw: failingResponse{}})
	select {
	case err := <-rec.aborted:
		if s := status.Convert(err); s.Code() != codes.Internal || !strings.Contains(s.Message(), resourcev3.ClusterType) || !strings.Contains(s.Message(), "resources of an unknown kind") {
			t.Errorf("the stream ended with %v, want Internal naming the type and the error", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the stream was not ended")
	}
}
