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
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

// Contract tests: what servingCache (cache.go), xdsCodec (codec.go) and the
// tracker rely on in go-control-plane's ADS server and in gRPC, checked
// against the libraries alone (a recording cache stands in for ours). When an
// upgrade of go-control-plane or gRPC changes one of these behaviours, the
// test says which assumption broke and where it is relied on, instead of a
// server test failing somewhere downstream.

// testTimeout bounds every wait of these tests.
const testTimeout = 20 * time.Second

// watchCall is one CreateWatch or CreateDeltaWatch as the server made it.
type watchCall struct {
	typeURL   string
	version   string
	names     []string
	wildcard  bool
	returned  map[string]string // a copy of sub.ReturnedResources()
	chanCap   int
	sotwCh    chan cachev3.Response
	deltaCh   chan cachev3.DeltaResponse
	sotwReq   *cachev3.Request
	deltaReq  *cachev3.DeltaRequest
	cancelled chan struct{}
}

// recordingCache implements cachev3.Cache by handing every watch to the test.
type recordingCache struct {
	calls chan *watchCall
}

func (c *recordingCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	w := &watchCall{typeURL: req.GetTypeUrl(), version: req.GetVersionInfo(), names: req.GetResourceNames(), wildcard: sub.IsWildcard(),
		returned: copyMap(sub.ReturnedResources()), chanCap: cap(ch), sotwCh: ch, sotwReq: req, cancelled: make(chan struct{})}
	c.calls <- w
	return func() { close(w.cancelled) }, nil
}

func (c *recordingCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	w := &watchCall{typeURL: req.GetTypeUrl(), wildcard: sub.IsWildcard(), returned: copyMap(sub.ReturnedResources()),
		chanCap: cap(ch), deltaCh: ch, deltaReq: req, cancelled: make(chan struct{})}
	c.calls <- w
	return func() { close(w.cancelled) }, nil
}

func (c *recordingCache) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, nil
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

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

// contractServer runs go-control-plane's ADS server over the recording cache,
// with detour's server options, and returns a client of it.
func contractServer(t *testing.T) (*recordingCache, recordingCodec, discoveryv3.AggregatedDiscoveryServiceClient) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rc := &recordingCache{calls: make(chan *watchCall, 16)}
	codec := recordingCodec{xdsCodec: newXDSCodec(), marshalled: make(chan any, 64)}
	xds := serverv3.NewServer(ctx, rc, nil, sotw.WithOrderedADS())
	g := grpc.NewServer(grpc.ForceServerCodecV2(codec))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, xds)
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
		cancel()
	})
	return rc, codec, discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
}

func nextWatch(t *testing.T, rc *recordingCache) *watchCall {
	t.Helper()
	select {
	case w := <-rc.calls:
		return w
	case <-time.After(testTimeout):
		t.Fatal("CONTRACT: go-control-plane's server did not create a watch for a request; servingCache answers only through watches")
	}
	return nil
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

// TestContractSotW: what the SotW side of servingCache relies on.
func TestContractSotW(t *testing.T) {
	t.Parallel()
	rc, codec, client := contractServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "n"}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	w := nextWatch(t, rc)
	if !w.wildcard || w.typeURL != resourcev3.ClusterType {
		t.Fatalf("CONTRACT: a request without names is a wildcard watch of its type; got wildcard=%v type %s", w.wildcard, w.typeURL)
	}
	// servingCache sends on the watch's channel with the node's lock held:
	// the channel must hold a response without a reader.
	if w.chanCap < 1 {
		t.Errorf("CONTRACT: the SotW watch channel has capacity %d; servingCache.SetSnapshot sends on it under the node's lock and would block (cache.go)", w.chanCap)
	}
	res := nonCanonicalCluster()
	w.sotwCh <- &cachev3.PassthroughResponse{
		Request:           w.sotwReq,
		DiscoveryResponse: &discoveryv3.DiscoveryResponse{VersionInfo: "v1", TypeUrl: resourcev3.ClusterType, Resources: []*anypb.Any{res}},
		ReturnedResources: map[string]string{returnedAll: "v1"},
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// Pre-encoded resources go out as they are: no re-marshal per proxy.
	if len(resp.GetResources()) != 1 || string(resp.GetResources()[0].GetValue()) != string(res.GetValue()) {
		t.Errorf("CONTRACT: the server changed the resource bytes of a PassthroughResponse; servingCache serves each resource's encoding once for every proxy (cache.go)")
	}
	if resp.GetNonce() == "" || resp.GetVersionInfo() != "v1" {
		t.Errorf("CONTRACT: the response has nonce %q and version %q; the tracker matches ACKs by nonce (tracker.go)", resp.GetNonce(), resp.GetVersionInfo())
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

	// The ACK: the map the cache returned comes back as the subscription's
	// returned resources (servingCache's one-entry returnedAll map).
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, VersionInfo: "v1", ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	w = nextWatch(t, rc)
	if w.version != "v1" || w.returned[returnedAll] != "v1" {
		t.Errorf("CONTRACT: after an ACK the watch has version %q and returned resources %v, want v1 and {%q: v1}: servingCache's returnedAll entry (cache.go) must come back unchanged",
			w.version, w.returned, returnedAll)
	}
	// A request naming resources drops the names it does not ask for,
	// returnedAll included: the stream then counts as knowing nothing.
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, VersionInfo: "v1", ResponseNonce: resp.GetNonce(), ResourceNames: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	w = nextWatch(t, rc)
	if w.wildcard {
		t.Error("CONTRACT: a request naming resources is still wildcard")
	}
	if _, kept := w.returned[returnedAll]; kept {
		t.Errorf("CONTRACT: a named request kept the %q entry of the returned resources (%v); servingCache.missing relies on its removal (cache.go)", returnedAll, w.returned)
	}
}

// TestContractDelta: what the delta side of servingCache and the codec rely on.
func TestContractDelta(t *testing.T) {
	t.Parallel()
	rc, codec, client := contractServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "n"}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	w := nextWatch(t, rc)
	if !w.wildcard {
		t.Fatal("CONTRACT: a delta request without subscriptions is not wildcard")
	}
	if w.chanCap < 1 {
		t.Errorf("CONTRACT: the delta watch channel has capacity %d; servingCache sends on it under the node's lock (cache.go)", w.chanCap)
	}
	res := nonCanonicalCluster()
	w.deltaCh <- &cachev3.DeltaPassthroughResponse{
		DeltaRequest:   w.deltaReq,
		NextVersionMap: map[string]string{returnedAll: "token"},
		DeltaDiscoveryResponse: &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: "v1", TypeUrl: resourcev3.ClusterType,
			Resources: []*discoveryv3.Resource{{Name: "a", Version: "1", Resource: res}}},
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
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	w = nextWatch(t, rc)
	if w.returned[returnedAll] != "token" {
		t.Errorf("CONTRACT: after the ACK the delta subscription's returned resources are %v, want the cache's NextVersionMap {%q: token} back (cache.go, sentType)", w.returned, returnedAll)
	}
	// Unsubscribing a name subscribed explicitly while wildcard: the server
	// writes "" for it, so that it is sent again on a later subscription.
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{"*", "a"}}); err != nil {
		t.Fatal(err)
	}
	if w = nextWatch(t, rc); !w.wildcard {
		t.Errorf("CONTRACT: subscribing [*, a] is not wildcard")
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, ResourceNamesUnsubscribe: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	w = nextWatch(t, rc)
	if v, ok := w.returned["a"]; !ok || v != "" {
		t.Errorf("CONTRACT: after unsubscribing %q while wildcard its returned version is %q (present %v), want \"\" (cache.go relies on it)", "a", v, ok)
	}
}
