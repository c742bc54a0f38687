package xds

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
)

// adsClient serves srv on an in-memory listener and returns a client of it.
func adsClient(t *testing.T, srv *Server) discoveryv3.AggregatedDiscoveryServiceClient {
	t.Helper()
	l := bufconn.Listen(1 << 20)
	go func() { _ = srv.ServeXDS(l) }()
	conn, err := grpc.NewClient("passthrough:///ads", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
}

// serving is a Server that holds before as node n's snapshot, a client of
// it, and a context that ends with the test (testTimeout at the most).
func serving(t *testing.T, before *Snapshot) (*Server, discoveryv3.AggregatedDiscoveryServiceClient, context.Context) {
	t.Helper()
	srv, ctx := holding(t, before)
	return srv, adsClient(t, srv), ctx
}

// holding is a Server, not yet serving, that holds before as node n's
// snapshot, and a context that ends with the test (testTimeout at the most).
func holding(t *testing.T, before *Snapshot) (*Server, context.Context) {
	t.Helper()
	srv := NewServer(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": before}}); err != nil {
		t.Fatal(err)
	}
	return srv, ctx
}

// openSotW opens a SotW stream of client and sends req on it.
func openSotW(ctx context.Context, t *testing.T, client discoveryv3.AggregatedDiscoveryServiceClient, reqs ...*discoveryv3.DiscoveryRequest) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	st, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range reqs {
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// sotwBoth are the first requests of a SotW proxy of node n: clusters, then
// listeners.
func sotwBoth() []*discoveryv3.DiscoveryRequest {
	return []*discoveryv3.DiscoveryRequest{
		{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType},
		{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ListenerType},
	}
}

// openDelta opens a delta stream of client and sends req on it.
func openDelta(ctx context.Context, t *testing.T, client discoveryv3.AggregatedDiscoveryServiceClient, req *discoveryv3.DeltaDiscoveryRequest) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	st, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(req); err != nil {
		t.Fatal(err)
	}
	return st
}

// unmarshallable is a snapshot whose one cluster's type URL is not UTF-8,
// which proto3 refuses to marshal.
func unmarshallable(t *testing.T) *Snapshot {
	t.Helper()
	var sb SnapshotBuilder
	bad, err := sb.Snapshot(nil, []*Resource{NewResource("bad", resourcev3.ClusterType+"\xff", nil)})
	if err != nil {
		t.Fatal(err)
	}
	return bad
}

// responses receives a stream's responses on one goroutine until it ends.
func responses[R any](recv func() (*R, error)) <-chan *R {
	ch := make(chan *R, 16)
	go func() {
		defer close(ch)
		for {
			r, err := recv()
			if err != nil {
				return
			}
			ch <- r
		}
	}()
	return ch
}

// within returns the next response, or nil when none came within d.
func within[R any](t *testing.T, ch <-chan *R, d time.Duration) *R {
	t.Helper()
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("the stream ended")
		}
		return r
	case <-time.After(d):
		return nil
	}
}

// TestADSSotWAnswersOnlyTheLastResponse: a SotW proxy is sent a change only
// once it answered the last response of the type (at most one response per
// type unanswered), and a request naming an older nonce is ignored. The
// stream's one goroutine and the push workers agree on the nonces.
func TestADSSotWAnswersOnlyTheLastResponse(t *testing.T) {
	t.Parallel()
	before, after := testSnapshots(t)
	srv, client, ctx := serving(t, before)
	st := openSotW(ctx, t, client, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType})
	rs := responses(st.Recv)
	first := within(t, rs, testTimeout)
	if first == nil || first.GetVersionInfo() != before.Versions().Clusters || first.GetNonce() == "" {
		t.Fatalf("first response %v, want version %s with a nonce", first, before.Versions().Clusters)
	}

	// A change while the proxy has not answered: nothing is pushed yet.
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": after}}); err != nil {
		t.Fatal(err)
	}
	if r := within(t, rs, 300*time.Millisecond); r != nil {
		t.Fatalf("a response (version %s) before the proxy answered the last one", r.GetVersionInfo())
	}
	// A request about an older response is ignored.
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: "", ResponseNonce: "stale"}); err != nil {
		t.Fatal(err)
	}
	if r := within(t, rs, 300*time.Millisecond); r != nil {
		t.Fatalf("a stale request got a response (version %s)", r.GetVersionInfo())
	}
	// The ACK of the last response: the change goes out at once.
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	next := within(t, rs, testTimeout)
	if next == nil || next.GetVersionInfo() != after.Versions().Clusters || next.GetNonce() == first.GetNonce() {
		t.Fatalf("after the ACK got %v, want version %s with a new nonce", next, after.Versions().Clusters)
	}
	if got := srv.tracker.status(); len(got) != 1 || got[0].Resources["clusters"].Acked != before.Versions().Clusters {
		t.Errorf("/debug/nodes: %+v, want clusters ACKed at %s", got, before.Versions().Clusters)
	}
}

// TestADSDeltaPushAndSubscribe: a delta stream is pushed a change by a push
// worker after its ACK, and a subscription change sent with an older nonce
// is still applied (delta requests are never stale).
func TestADSDeltaPushAndSubscribe(t *testing.T) {
	t.Parallel()
	before, after := testSnapshots(t)
	srv, client, ctx := serving(t, before)
	st := openDelta(ctx, t, client, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType,
		ResourceNamesSubscribe: []string{"passthrough"}})
	rs := responses(st.Recv)
	first := within(t, rs, testTimeout)
	if first == nil || len(first.GetResources()) != 1 || first.GetResources()[0].GetName() != "passthrough" {
		t.Fatalf("first response %v, want passthrough alone", first)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	// A subscription with a nonce that is not the last: applied.
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: "older",
		ResourceNamesSubscribe: []string{"outbound|80|web"}}); err != nil {
		t.Fatal(err)
	}
	web := within(t, rs, testTimeout)
	if web == nil || len(web.GetResources()) != 1 || web.GetResources()[0].GetName() != "outbound|80|web" {
		t.Fatalf("after subscribing to web got %v, want web alone", web)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: web.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	// The change removes web: pushed by a worker.
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": after}}); err != nil {
		t.Fatal(err)
	}
	gone := within(t, rs, testTimeout)
	if gone == nil || len(gone.GetResources()) != 0 || len(gone.GetRemovedResources()) != 1 || gone.GetRemovedResources()[0] != "outbound|80|web" {
		t.Fatalf("after the change got %v, want web removed and nothing else", gone)
	}
}

// TestADSWatchKeepsNoNode: Envoy sends its node (build, extensions: a few
// KiB) with every request unless set_node_on_first_message_only; the open
// watch a request leaves behind, one per type per proxy, keeps none of it.
func TestADSWatchKeepsNoNode(t *testing.T) {
	t.Parallel()
	before, _ := testSnapshots(t)
	srv, client, ctx := serving(t, before)
	node := &corev3.Node{Id: "n", UserAgentName: "envoy", Cluster: "app"}
	st := openSotW(ctx, t, client, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	rs := responses(st.Recv)
	first := within(t, rs, testTimeout)
	if first == nil {
		t.Fatal("no response")
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, VersionInfo: first.GetVersionInfo(),
		ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testTimeout)
	for {
		n := srv.cache.node("n")
		var watches []*sotwWatch
		watches = append(watches, n.sotw...)
		n.mu.Unlock()
		if len(watches) == 1 && watches[0].req.GetResponseNonce() == first.GetNonce() {
			if got := watches[0].req.GetNode(); got != nil {
				t.Errorf("the open watch keeps the request's node %v", got)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no watch of the ACK opened: %d watches", len(watches))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestADSDeltaReleasesSentState: a wildcard delta stream holds, in the
// cache's sent table, only the version its installed map names: the version
// a change replaced is released when the change's response is sent, and the
// last one when the stream closes.
func TestADSDeltaReleasesSentState(t *testing.T) {
	t.Parallel()
	before, after := testSnapshots(t)
	srv, client, ctx := serving(t, before)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.DeltaAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	rs := responses(st.Recv)
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	first := within(t, rs, testTimeout)
	if first == nil {
		t.Fatal("no first response")
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	waitSent := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(testTimeout)
		for {
			got := sentVersions(srv.cache, "n")
			if slices.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("sent table holds %v, want %v", got, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitSent(before.clusters.version)
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": after}}); err != nil {
		t.Fatal(err)
	}
	if r := within(t, rs, testTimeout); r == nil || r.GetSystemVersionInfo() != after.clusters.version {
		t.Fatalf("after the change got %v, want version %s", r, after.clusters.version)
	}
	waitSent(after.clusters.version)
	cancel()
	waitSent()
}

// TestADSSotWNodesGetTheirOwnResources: proxies of distinct snapshots, pushed
// one after another by the same workers (whose full SotW lists are reused
// from push to push), each receive exactly their own resources, on
// connection and after a change.
func TestADSSotWNodesGetTheirOwnResources(t *testing.T) {
	t.Parallel()
	const n = 12
	snaps := func(variant int) map[string]*Snapshot {
		var sb SnapshotBuilder
		nodes := make(map[string]*Snapshot, n)
		for i := range n {
			own := fmt.Sprintf("inbound|%d", 9000+i)
			cs := []*Resource{testCluster(t, "blackhole", 0), testCluster(t, own, 1+variant)}
			if i%2 == 0 {
				cs = append(cs, testCluster(t, "outbound|80|web", 2))
			}
			s, err := sb.Snapshot(nil, cs)
			if err != nil {
				t.Fatal(err)
			}
			nodes[fmt.Sprintf("n%d", i)] = s
		}
		return nodes
	}
	want := func(i int) []string {
		if i%2 == 0 {
			return []string{"blackhole", fmt.Sprintf("inbound|%d", 9000+i), "outbound|80|web"}
		}
		return []string{"blackhole", fmt.Sprintf("inbound|%d", 9000+i)}
	}
	srv := NewServer(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	before, after := snaps(0), snaps(1)
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: before}); err != nil {
		t.Fatal(err)
	}
	client := adsClient(t, srv)
	streams := make([]<-chan *discoveryv3.DiscoveryResponse, n)
	sends := make([]func(*discoveryv3.DiscoveryRequest) error, n)
	for i := range n {
		st, err := client.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		streams[i], sends[i] = responses(st.Recv), st.Send
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprintf("n%d", i)}, TypeUrl: resourcev3.ClusterType}); err != nil {
			t.Fatal(err)
		}
	}
	for round, nodes := range []map[string]*Snapshot{before, after} {
		if round == 1 {
			if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: after}); err != nil {
				t.Fatal(err)
			}
		}
		for i := range n {
			r := within(t, streams[i], testTimeout)
			id := fmt.Sprintf("n%d", i)
			if r == nil || r.GetVersionInfo() != nodes[id].Versions().Clusters {
				t.Fatalf("round %d: node %s got %v, want version %s", round, id, r, nodes[id].Versions().Clusters)
			}
			if got := names(t, r.GetResources()); !slices.Equal(got, want(i)) {
				t.Errorf("round %d: node %s got clusters %v, want %v", round, id, got, want(i))
			}
			for _, a := range r.GetResources() {
				if !slices.ContainsFunc(slices.Collect(nodes[id].clusters.all()), func(res *Resource) bool { return bytes.Equal(res.any.GetValue(), a.GetValue()) }) {
					t.Errorf("round %d: node %s got a cluster that is not its own", round, id)
				}
			}
			if err := sends[i](&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
				t.Fatal(err)
			}
		}
	}
}
