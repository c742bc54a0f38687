package xds

import (
	"context"
	"net"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

// Contract tests: what the ADS server (ads.go), servingCache (cache.go) and
// xdsCodec (codec.go) rely on in go-control-plane's subscriptions and in
// gRPC's server streams, checked against the libraries alone. When an upgrade
// of go-control-plane or gRPC changes one of these behaviours, the test says
// which assumption broke and where it is relied on, instead of a server test
// failing somewhere downstream.

// testTimeout bounds every wait of these tests.
const testTimeout = 20 * time.Second

// recordingCodec is xdsCodec, noting the types gRPC hands it to marshal.
type recordingCodec struct {
	xdsCodec
	marshalled chan any
}

func (c recordingCodec) Marshal(v any) (mem.BufferSlice, error) {
	select {
	case c.marshalled <- v:
	default:
	}
	return c.xdsCodec.Marshal(v)
}

// nonCanonicalCluster is a valid Cluster encoding that a re-marshal would
// change: its name field twice (the last one wins).
func nonCanonicalCluster() *anypb.Any {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, "not-this")
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, "a")
	return &anypb.Any{TypeUrl: resourcev3.ClusterType, Value: b}
}

// TestContractSotWSubscription: go-control-plane's SotW subscription, as
// adsStream.sotwRequest keeps it and servingCache reads it.
func TestContractSotWSubscription(t *testing.T) {
	t.Parallel()
	sub := stream.NewSotwSubscription(nil, true)
	if !sub.IsWildcard() {
		t.Fatal("CONTRACT: a first SotW request without names is not a wildcard subscription (legacy wildcard; ads.go)")
	}
	sub.SetReturnedResources(map[string]string{returnedAll: "v1"})
	sub.SetResourceSubscription(nil)
	if !sub.IsWildcard() || sub.ReturnedResources()[returnedAll] != "v1" {
		t.Errorf("CONTRACT: an ACK without names changed the subscription (wildcard %v, returned %v); servingCache's returnedAll entry (cache.go) must stay",
			sub.IsWildcard(), sub.ReturnedResources())
	}
	// A request naming resources drops the names it does not ask for,
	// returnedAll included: the stream then counts as knowing nothing.
	sub.SetResourceSubscription([]string{"a"})
	if sub.IsWildcard() {
		t.Error("CONTRACT: a request naming resources is still wildcard")
	}
	if _, kept := sub.ReturnedResources()[returnedAll]; kept {
		t.Errorf("CONTRACT: a named request kept the %q entry of the returned resources (%v); servingCache.missing relies on its removal (cache.go)",
			returnedAll, sub.ReturnedResources())
	}
	if _, ok := sub.SubscribedResources()["a"]; !ok || len(sub.SubscribedResources()) != 1 {
		t.Errorf("CONTRACT: subscribed resources %v, want [a]", sub.SubscribedResources())
	}
	sub.SetResourceSubscription([]string{"*"})
	if !sub.IsWildcard() || len(sub.SubscribedResources()) != 0 {
		t.Errorf("CONTRACT: [*] is wildcard %v with names %v, want wildcard and none", sub.IsWildcard(), sub.SubscribedResources())
	}
	// The map of a full response is shared by every stream of that version
	// (servedType.returned); adsStream.sotwRequest copies it only when the
	// subscription could change it: never on a legacy wildcard ACK (above)
	// nor on a request with "*".
	shared := map[string]string{returnedAll: "v1"}
	sub.SetReturnedResources(shared)
	sub.SetResourceSubscription([]string{"*", "a"})
	if shared[returnedAll] != "v1" {
		t.Errorf("CONTRACT: a request with * changed the returned map in place (%v); the map may be shared between streams (ads.go)", shared)
	}
	// The cache keeps the subscription it is given by value: a copy taken
	// before SetReturnedResources keeps its map.
	held := cachev3.Subscription(sub)
	sub.SetReturnedResources(map[string]string{returnedAll: "v2"})
	if held.ReturnedResources()[returnedAll] == "v2" {
		t.Error("CONTRACT: SetReturnedResources changed a copy of the subscription; a watch's subscription must not change under it (ads.go)")
	}
}

// TestContractDeltaSubscription: go-control-plane's delta subscription, as
// adsStream.deltaRequest keeps it and servingCache reads it.
func TestContractDeltaSubscription(t *testing.T) {
	t.Parallel()
	sub := stream.NewDeltaSubscription(nil, nil, nil, true)
	if !sub.IsWildcard() {
		t.Fatal("CONTRACT: a delta request without subscriptions is not wildcard")
	}
	sub.SetReturnedResources(map[string]string{returnedAll: "token"})
	sub.UpdateResourceSubscriptions(nil, nil)
	if sub.ReturnedResources()[returnedAll] != "token" {
		t.Errorf("CONTRACT: an ACK changed the delta subscription's returned resources to %v, want the cache's NextVersionMap {%q: token} (cache.go, sentType)",
			sub.ReturnedResources(), returnedAll)
	}
	// Unsubscribing a name subscribed explicitly while wildcard writes ""
	// for it, so that it is sent again on a later subscription.
	sub.UpdateResourceSubscriptions([]string{"*", "a"}, nil)
	if !sub.IsWildcard() {
		t.Error("CONTRACT: subscribing [*, a] is not wildcard")
	}
	sub.UpdateResourceSubscriptions(nil, []string{"a"})
	if v, ok := sub.ReturnedResources()["a"]; !ok || v != "" {
		t.Errorf("CONTRACT: after unsubscribing %q while wildcard its returned version is %q (present %v), want \"\" (cache.go relies on it)", "a", v, ok)
	}
	sub.UpdateResourceSubscriptions(nil, []string{"*"})
	if sub.IsWildcard() {
		t.Error("CONTRACT: unsubscribing * leaves the stream wildcard")
	}
	initial := stream.NewDeltaSubscription([]string{"a"}, nil, map[string]string{"a": "h1"}, true)
	if initial.IsWildcard() || initial.ReturnedResources()["a"] != "h1" {
		t.Errorf("CONTRACT: a first request naming a with initial version h1: wildcard %v, returned %v", initial.IsWildcard(), initial.ReturnedResources())
	}
}

// streamServer is an ADS service whose streams the test handles.
type streamServer struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	sotw  func(grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error
	delta func(grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error
}

func (s *streamServer) StreamAggregatedResources(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return s.sotw(st)
}

func (s *streamServer) DeltaAggregatedResources(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return s.delta(st)
}

// contractServer serves srv with detour's server options and returns a
// client of it and the server.
func contractServer(t *testing.T, srv *streamServer) (recordingCodec, *grpc.Server, discoveryv3.AggregatedDiscoveryServiceClient) {
	t.Helper()
	codec := recordingCodec{xdsCodec: newXDSCodec(nil), marshalled: make(chan any, 64)}
	opts := append(grpcServerOptions(), grpc.ForceServerCodecV2(codec))
	g := grpc.NewServer(opts...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	l := bufconn.Listen(1 << 20)
	go func() { _ = g.Serve(l) }()
	conn, err := grpc.NewClient("passthrough:///contract", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
	})
	return codec, g, discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
}

// returnsWithin runs f and reports whether it returned within d.
func returnsWithin(d time.Duration, f func()) bool {
	done := make(chan struct{})
	go func() {
		f()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// TestContractSotWStream: what the SotW side of the ADS server relies on in
// gRPC's server streams.
func TestContractSotWStream(t *testing.T) {
	t.Parallel()
	received := make(chan error, 1)
	sent := make(chan error, 4)
	var handler grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	ready := make(chan struct{})
	srv := &streamServer{sotw: func(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
		handler = st
		close(ready)
		// The handler goroutine waits for the next request while push
		// workers send (ads.go).
		for {
			var req discoveryv3.DiscoveryRequest
			if err := st.RecvMsg(&req); err != nil {
				received <- err
				return err
			}
		}
	}}
	codec, g, client := contractServer(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	<-ready
	res := nonCanonicalCluster()
	go func() {
		sent <- handler.SendMsg(&discoveryv3.DiscoveryResponse{VersionInfo: "v1", TypeUrl: resourcev3.ClusterType, Resources: []*anypb.Any{res}, Nonce: "1"})
	}()
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("CONTRACT: a response sent from another goroutine while the handler waits in RecvMsg did not arrive (ads.go's push workers): %v", err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	// Pre-encoded resources go out as they are: no re-marshal per proxy.
	if len(resp.GetResources()) != 1 || string(resp.GetResources()[0].GetValue()) != string(res.GetValue()) {
		t.Errorf("CONTRACT: the resource bytes changed on the way out; servingCache serves each resource's encoding once for every proxy (cache.go)")
	}
	select {
	case v := <-codec.marshalled:
		if _, ok := v.(*discoveryv3.DiscoveryResponse); !ok {
			t.Errorf("CONTRACT: gRPC gave the server codec a %T, want *DiscoveryResponse (codec.go)", v)
		}
	default:
		t.Error("CONTRACT: gRPC did not marshal the response with the codec of grpc.ForceServerCodecV2 (codec.go)")
	}
	var c clusterv3.Cluster
	if err := resp.GetResources()[0].UnmarshalTo(&c); err != nil || c.GetName() != "a" {
		t.Fatalf("the non-canonical cluster decodes as %q, %v", c.GetName(), err)
	}

	// A push worker's send returns once gRPC queued the message: it does
	// not wait for the proxy to read it, even when it is larger than the
	// flow-control window (the client reads nothing from here on).
	big := &anypb.Any{TypeUrl: resourcev3.ClusterType, Value: make([]byte, 256<<10)}
	if !returnsWithin(5*time.Second, func() {
		sent <- handler.SendMsg(&discoveryv3.DiscoveryResponse{VersionInfo: "v2", TypeUrl: resourcev3.ClusterType, Resources: []*anypb.Any{big}, Nonce: "2"})
	}) {
		t.Error("CONTRACT: SendMsg of one response waits for the proxy to read it; a push worker would be held by one slow proxy (ads.go, pushQueue)")
	} else if err := <-sent; err != nil {
		t.Fatal(err)
	}

	// Server.Stop ends the streams by stopping gRPC: a handler waiting in
	// RecvMsg returns.
	g.Stop()
	select {
	case err := <-received:
		if err == nil {
			t.Error("CONTRACT: RecvMsg returned no error after the server stopped")
		}
	case <-time.After(testTimeout):
		t.Error("CONTRACT: a handler waiting in RecvMsg did not return after grpc.Server.Stop; Server.Stop relies on it (server.go)")
	}
}

// TestContractDeltaStream: what the delta side of the ADS server and the
// codec rely on in gRPC's server streams.
func TestContractDeltaStream(t *testing.T) {
	t.Parallel()
	res := nonCanonicalCluster()
	srv := &streamServer{delta: func(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
		var req discoveryv3.DeltaDiscoveryRequest
		if err := st.RecvMsg(&req); err != nil {
			return err
		}
		if err := st.SendMsg(&discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: "v1", TypeUrl: resourcev3.ClusterType, Nonce: "1",
			Resources: []*discoveryv3.Resource{{Name: "a", Version: "1", Resource: res}}}); err != nil {
			return err
		}
		return st.RecvMsg(&req)
	}}
	codec, _, client := contractServer(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || string(resp.GetResources()[0].GetResource().GetValue()) != string(res.GetValue()) {
		t.Errorf("CONTRACT: the delta resource bytes changed on the way out; the codec references each resource's encoding (codec.go)")
	}
	sawDelta := false
	for len(codec.marshalled) > 0 {
		if _, ok := (<-codec.marshalled).(*discoveryv3.DeltaDiscoveryResponse); ok {
			sawDelta = true
		}
	}
	if !sawDelta {
		t.Error("CONTRACT: gRPC did not give the server codec the *DeltaDiscoveryResponse; xdsCodec's reference marshalling would not run (codec.go)")
	}
}
