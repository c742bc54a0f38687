package xds

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// testCluster is a served cluster named name; endpoints changes its content.
func testCluster(t *testing.T, name string, endpoints int) *Resource {
	t.Helper()
	c := &clusterv3.Cluster{Name: name, ConnectTimeout: durationpb.New(5 * time.Second)}
	if endpoints > 0 {
		la := &endpointv3.LocalityLbEndpoints{}
		for i := range endpoints {
			la.LbEndpoints = append(la.LbEndpoints, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
				Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: fmt.Sprintf("203.0.113.%d", 10+i), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 5432}}}}},
			}})
		}
		c.LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{la}}
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return NewResource(name, resourcev3.ClusterType, b)
}

// testSnapshots returns a node's snapshot and the next one, where the
// service "web" is gone (a cluster fewer) and "db" has one more endpoint (its
// cluster differs). The names are those detour's generator gives.
func testSnapshots(t *testing.T) (before, after *Snapshot) {
	t.Helper()
	var sb SnapshotBuilder
	before, err := sb.Snapshot(nil, []*Resource{testCluster(t, "passthrough", 0), testCluster(t, "blackhole", 0),
		testCluster(t, "outbound|80|web", 2), testCluster(t, "outbound|5432|db", 1)})
	if err != nil {
		t.Fatal(err)
	}
	after, err = sb.Snapshot(nil, []*Resource{testCluster(t, "passthrough", 0), testCluster(t, "blackhole", 0),
		testCluster(t, "outbound|5432|db", 2)})
	if err != nil {
		t.Fatal(err)
	}
	return before, after
}

// TestSnapshotsShareCommonResources: snapshots of one builder whose nodes
// reach the same services share the list of those resources instead of
// keeping it per node, and each node is still served exactly its own
// resources, in name order, under the version of its resources alone.
func TestSnapshotsShareCommonResources(t *testing.T) {
	t.Parallel()
	var services, others []*Resource
	for i := range 12 {
		services = append(services, testCluster(t, fmt.Sprintf("outbound|80|svc-%02d", i), 1))
		others = append(others, testCluster(t, fmt.Sprintf("outbound|81|other-%02d", i), 1))
	}
	// Nodes 0–5 reach services, 6 and 7 others, 8 and 9 services again,
	// 10 half of each; each has its own inbound cluster (one sorts before
	// every service, one among them, one after).
	own := []string{"inbound|8080", "outbound|80|svc-05a", "zz-local"}
	nodes := make([][]*Resource, 11)
	for i := range nodes {
		switch {
		case i == 6 || i == 7:
			nodes[i] = slices.Clone(others)
		case i == 10:
			nodes[i] = append(slices.Clone(services[:6]), others[:6]...)
		default:
			nodes[i] = slices.Clone(services)
		}
		nodes[i] = append(nodes[i], testCluster(t, own[i%3], i+1))
	}
	var sb SnapshotBuilder
	snaps := make([]*Snapshot, len(nodes))
	for i, res := range nodes {
		in := slices.Clone(res)
		slices.Reverse(in) // any order
		s, err := sb.Snapshot(nil, in)
		if err != nil {
			t.Fatal(err)
		}
		snaps[i] = s
	}
	c := newTestCache()
	for i, res := range nodes {
		want := slices.SortedFunc(slices.Values(res), func(a, b *Resource) int { return strings.Compare(a.name, b.name) })
		var wantNames []string
		for _, r := range want {
			wantNames = append(wantNames, r.name)
		}
		s := snaps[i]
		if got := servedNames(&s.clusters); !slices.Equal(got, wantNames) {
			t.Errorf("node %d is served %v, want %v", i, got, wantNames)
		}
		for _, r := range want {
			if got := s.clusters.lookup(r.name); got != r {
				t.Errorf("node %d: lookup(%s) = %v, want its own resource", i, r.name, got)
			}
		}
		if s.clusters.lookup("outbound|80|svc-99") != nil {
			t.Errorf("node %d: lookup of a name it does not have found one", i)
		}
		var alone SnapshotBuilder
		fresh, err := alone.Snapshot(nil, slices.Clone(res))
		if err != nil {
			t.Fatal(err)
		}
		if s.Versions() != fresh.Versions() {
			t.Errorf("node %d: versions %v, built alone %v", i, s.Versions(), fresh.Versions())
		}
		node := fmt.Sprintf("n%d", i)
		if err := c.SetSnapshot(context.Background(), node, s); err != nil {
			t.Fatal(err)
		}
		var got cachev3.Response
		c.CreateWatch(node, &cachev3.Request{TypeUrl: resourcev3.ClusterType}, stream.NewSotwSubscription(nil, true), func(r cachev3.Response) { got = r })
		if got == nil {
			t.Fatalf("node %d: no response", i)
		}
		dr, err := got.GetDiscoveryResponse()
		if err != nil {
			t.Fatal(err)
		}
		if n := names(t, dr.GetResources()); !slices.Equal(n, wantNames) {
			t.Errorf("node %d: SotW response has %v, want %v", i, n, wantNames)
		}
	}
	// The memory this is for: after the first node of a group, a node keeps
	// only its own cluster.
	for _, i := range []int{2, 3, 4, 5, 7, 8, 9} {
		if n := len(snaps[i].clusters.own); n != 1 {
			t.Errorf("node %d keeps %d clusters of its own, want 1 (the rest shared)", i, n)
		}
	}
	if &snaps[2].clusters.common[0] != &snaps[9].clusters.common[0] {
		t.Errorf("nodes 2 and 9 reach the same services but do not share their list")
	}
}

// names are the cluster names of resources, in order.
func names(t *testing.T, resources []*anypb.Any) []string {
	t.Helper()
	var out []string
	for _, a := range resources {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		out = append(out, c.GetName())
	}
	return out
}

// TestSnapshotVersions: a snapshot's versions are hashes of its resources'
// names and contents, whatever their order; names are unique per type.
func TestSnapshotVersions(t *testing.T) {
	t.Parallel()
	var sb SnapshotBuilder
	a, b, c := testCluster(t, "a", 1), testCluster(t, "b", 1), testCluster(t, "b", 2)
	s1, err := sb.Snapshot(nil, []*Resource{a, b})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := sb.Snapshot(nil, []*Resource{b, a})
	if err != nil {
		t.Fatal(err)
	}
	s3, err := sb.Snapshot(nil, []*Resource{a, c})
	if err != nil {
		t.Fatal(err)
	}
	if s1.Versions() != s2.Versions() || s1.Versions().Clusters == "" {
		t.Errorf("the same resources in another order: versions %v and %v, want equal and set", s1.Versions(), s2.Versions())
	}
	if s3.Versions().Clusters == s1.Versions().Clusters || s3.Versions().Listeners != s1.Versions().Listeners {
		t.Errorf("one cluster changed: versions %v, before %v; want only the clusters' version changed", s3.Versions(), s1.Versions())
	}
	if _, err := sb.Snapshot(nil, []*Resource{b, c}); err == nil || !strings.Contains(err.Error(), `named "b"`) {
		t.Errorf("two clusters named b: error %v, want one naming b", err)
	}
	// The served forms carry the encoding itself, and the delta form's
	// version is the content hash.
	if a.any.GetTypeUrl() != resourcev3.ClusterType || a.delta.GetResource() != a.any || a.delta.GetName() != "a" ||
		a.delta.GetVersion() != a.hash || len(a.hash) != 24 {
		t.Errorf("served as Any %q, delta resource %q version %q (hash %q)", a.any.GetTypeUrl(), a.delta.GetName(), a.delta.GetVersion(), a.hash)
	}
}

// TestSotWCacheResponseIsPreEncoded: the cache answers a SotW watch with a
// pre-encoded response (go-control-plane's server sends it as it is) of the
// snapshot's resources, and remembers a full response as one entry.
func TestSotWCacheResponseIsPreEncoded(t *testing.T) {
	t.Parallel()
	before, _ := testSnapshots(t)
	c := newTestCache()
	if err := c.SetSnapshot(context.Background(), "n", before); err != nil {
		t.Fatal(err)
	}
	ch := make(chan cachev3.Response, 1)
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType}
	c.CreateWatch("n", req, stream.NewSotwSubscription(nil, true), sendTo(ch))
	r := <-ch
	if _, ok := r.(*sotwResponse); !ok {
		t.Fatalf("response is a %T, want a pre-encoded *sotwResponse", r)
	}
	dr, err := r.GetDiscoveryResponse()
	if err != nil {
		t.Fatal(err)
	}
	v := before.Versions()
	if got, want := names(t, dr.GetResources()), servedNames(&before.clusters); dr.GetVersionInfo() != v.Clusters || !slices.Equal(got, want) {
		t.Errorf("pre-encoded response: version %q (want %q), clusters %v (want %v)", dr.GetVersionInfo(), v.Clusters, got, want)
	}
	if got, want := r.GetReturnedResources(), map[string]string{returnedAll: v.Clusters}; !maps.Equal(got, want) {
		t.Errorf("returned resources = %q, want %q", got, want)
	}
}

// sendTo is a watch's send into ch, which must have room.
func sendTo[R any](ch chan R) func(R) {
	return func(r R) {
		select {
		case ch <- r:
		default:
			panic("a watch answered more responses than the test expects")
		}
	}
}

func newTestCache() *servingCache {
	return newServingCache(slog.New(slog.DiscardHandler), time.Minute, func(string, string) string { return "" }, func(string) {})
}

func servedNames(t *servedType) []string {
	var out []string
	for r := range t.all() {
		out = append(out, r.name)
	}
	return out
}

// deltaStream plays the ADS server's delta stream for one type: it keeps
// the subscription, records what each response returned, and re-opens the
// watch after each response as an ACK does.
type deltaStream struct {
	t     *testing.T
	c     *servingCache
	node  *corev3.Node
	typ   string
	sub   stream.Subscription
	ch    chan cachev3.DeltaResponse
	nonce int
	ref   *sentRef // of the installed map, released when replaced (as adsStream.flush)
}

func newDeltaStream(t *testing.T, c *servingCache, node, typeURL string, subscribe []string) *deltaStream {
	return &deltaStream{t: t, c: c, node: &corev3.Node{Id: node}, typ: typeURL,
		sub: stream.NewDeltaSubscription(subscribe, nil, nil, true), ch: make(chan cachev3.DeltaResponse, 4)}
}

// request opens a watch (after updating the subscription, as the server does)
// and returns the response it got at once, or nil.
func (s *deltaStream) request(subscribe, unsubscribe []string) *discoveryv3.DeltaDiscoveryResponse {
	s.t.Helper()
	updateDeltaSubscription(&s.sub, subscribe, unsubscribe)
	nonce := ""
	if s.nonce > 0 {
		nonce = "n"
	}
	req := &discoveryv3.DeltaDiscoveryRequest{Node: s.node, TypeUrl: s.typ, ResponseNonce: nonce,
		ResourceNamesSubscribe: subscribe, ResourceNamesUnsubscribe: unsubscribe}
	s.c.CreateDeltaWatch(s.node.GetId(), req, s.sub, sendTo(s.ch))
	return s.next()
}

// next returns the pending response, or nil, and records what it returned.
func (s *deltaStream) next() *discoveryv3.DeltaDiscoveryResponse {
	s.t.Helper()
	select {
	case r := <-s.ch:
		s.nonce++
		s.sub.SetReturnedResources(r.GetNextVersionMap())
		s.ref.release()
		s.ref = sentRefOf(r)
		out, err := r.GetDeltaDiscoveryResponse()
		if err != nil {
			s.t.Fatal(err)
		}
		return out
	default:
		return nil
	}
}

func deltaNames(r *discoveryv3.DeltaDiscoveryResponse) []string {
	var out []string
	for _, x := range r.GetResources() {
		out = append(out, x.GetName())
	}
	slices.Sort(out)
	return out
}

// TestDeltaCacheWildcard follows a wildcard delta stream through a change: it
// receives everything once, then exactly what changed and what is gone, and
// its version map is one entry, not one per resource.
func TestDeltaCacheWildcard(t *testing.T) {
	t.Parallel()
	before, after := testSnapshots(t)
	c := newTestCache()
	ctx := context.Background()
	if err := c.SetSnapshot(ctx, "redirect-dual", before); err != nil {
		t.Fatal(err)
	}
	s := newDeltaStream(t, c, "redirect-dual", resourcev3.ClusterType, nil)
	first := s.request(nil, nil)
	if got, want := deltaNames(first), servedNames(&before.clusters); !slices.Equal(got, want) {
		t.Fatalf("first response = %v, want every cluster %v", got, want)
	}
	if len(s.sub.ReturnedResources()) != 1 {
		t.Errorf("the stream keeps %d entries, want 1 for the whole state", len(s.sub.ReturnedResources()))
	}
	if r := s.request(nil, nil); r != nil {
		t.Fatalf("an ACK with nothing new got %v", r)
	}
	if err := c.SetSnapshot(ctx, "redirect-dual", after); err != nil {
		t.Fatal(err)
	}
	r := s.next()
	if r == nil {
		t.Fatal("no response to the change")
	}
	var changed []string
	for x := range after.clusters.all() {
		if old := before.clusters.lookup(x.name); old == nil || old.hash != x.hash {
			changed = append(changed, x.name)
		}
	}
	if got := deltaNames(r); !slices.Equal(got, changed) || len(changed) == 0 {
		t.Errorf("change sent %v, want the changed clusters %v", got, changed)
	}
	if got := r.GetRemovedResources(); !slices.Equal(got, []string{"outbound|80|web"}) {
		t.Errorf("removed = %v, want web's clusters", got)
	}

	// Unsubscribing a name explicitly subscribed while wildcard makes the
	// server mark it "" in the stream's map: it is sent again.
	s2 := newDeltaStream(t, c, "redirect-dual", resourcev3.ClusterType, []string{"*", "passthrough"})
	s2.request(nil, nil)
	if r := s2.request(nil, []string{"passthrough"}); !slices.Equal(deltaNames(r), []string{"passthrough"}) {
		t.Errorf("after unsubscribing passthrough while wildcard got %v, want it again", deltaNames(r))
	}
}

// TestDeltaCacheLeavingWildcard checks a stream that leaves wildcard for one
// name: it gets an explicit map at once (even in an empty response), so that
// unsubscribing and subscribing again resends the resource.
func TestDeltaCacheLeavingWildcard(t *testing.T) {
	t.Parallel()
	before, _ := testSnapshots(t)
	c := newTestCache()
	if err := c.SetSnapshot(context.Background(), "redirect-dual", before); err != nil {
		t.Fatal(err)
	}
	s := newDeltaStream(t, c, "redirect-dual", resourcev3.ClusterType, nil)
	s.request(nil, nil)
	r := s.request([]string{"passthrough"}, []string{"*"})
	if r == nil || len(r.GetResources()) != 0 || len(r.GetRemovedResources()) != 0 {
		t.Fatalf("leaving wildcard got %v, want an empty response", r)
	}
	if got := s.sub.ReturnedResources(); len(got) != 1 || got["passthrough"] == "" {
		t.Errorf("map after leaving wildcard = %v, want passthrough's version only", got)
	}
	if r := s.request(nil, []string{"passthrough"}); r != nil {
		t.Errorf("unsubscribing got %v", r)
	}
	if r := s.request([]string{"passthrough"}, nil); !slices.Equal(deltaNames(r), []string{"passthrough"}) {
		t.Errorf("subscribing again got %v, want passthrough", deltaNames(r))
	}
}

// sentVersions are the versions of typeURL in the node's sent table.
func sentVersions(c *servingCache, node string) []string {
	n := c.node(node)
	defer n.mu.Unlock()
	var out []string
	for k := range n.sent {
		out = append(out, k.version)
	}
	slices.Sort(out)
	return out
}

// TestDeltaCacheReleasesSentState checks that the served state a stream's map
// refers to is released as soon as the stream replaces the map (not when the
// collector finds the old map unreachable): a change keeps one generation of
// a node's snapshot for its delta streams, not two.
func TestDeltaCacheReleasesSentState(t *testing.T) {
	t.Parallel()
	before, after := testSnapshots(t)
	c := newTestCache()
	ctx := context.Background()
	if err := c.SetSnapshot(ctx, "redirect-dual", before); err != nil {
		t.Fatal(err)
	}
	s := newDeltaStream(t, c, "redirect-dual", resourcev3.ClusterType, nil)
	s.request(nil, nil)
	s.request(nil, nil) // ACK: the watch is open
	if got := sentVersions(c, "redirect-dual"); !slices.Equal(got, []string{before.clusters.version}) {
		t.Fatalf("sent = %v, want the first version", got)
	}
	if err := c.SetSnapshot(ctx, "redirect-dual", after); err != nil {
		t.Fatal(err)
	}
	// The response is queued, not yet installed: both versions are held.
	if got := sentVersions(c, "redirect-dual"); len(got) != 2 {
		t.Fatalf("sent = %v with the change's response pending, want both versions", got)
	}
	if s.next() == nil {
		t.Fatal("no response to the change")
	}
	if got := sentVersions(c, "redirect-dual"); !slices.Equal(got, []string{after.clusters.version}) {
		t.Fatalf("sent = %v once the stream installed the new map, want only %s", got, after.clusters.version)
	}
	s.ref.release() // the stream goes away
	s.ref.release() // releasing twice counts once
	if got := sentVersions(c, "redirect-dual"); len(got) != 0 {
		t.Fatalf("sent = %v after the stream released its map, want nothing", got)
	}
}

// TestSotWCacheNamedAndWildcard checks SotW requests that name resources (only
// those are sent) and a stream that goes back to wildcard at the same version
// (it is sent what it lacks).
func TestSotWCacheNamedAndWildcard(t *testing.T) {
	t.Parallel()
	before, _ := testSnapshots(t)
	c := newTestCache()
	if err := c.SetSnapshot(context.Background(), "redirect-dual", before); err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "redirect-dual"}
	ch := make(chan cachev3.Response, 4)
	sub := stream.NewSotwSubscription([]string{"passthrough", "blackhole", "no-such"}, true)
	req := &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"passthrough", "blackhole", "no-such"}}
	c.CreateWatch(node.GetId(), req, sub, sendTo(ch))
	r := <-ch
	dr, _ := r.GetDiscoveryResponse()
	if got := names(t, dr.GetResources()); !slices.Equal(got, []string{"blackhole", "passthrough"}) {
		t.Errorf("named request got %v, want blackhole and passthrough", got)
	}
	sub.SetReturnedResources(r.GetReturnedResources())

	// Same version, now wildcard: the rest is missing, so it is sent.
	sub.SetResourceSubscription([]string{"*"})
	req = &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, VersionInfo: before.clusters.version, ResourceNames: []string{"*"}}
	c.CreateWatch(node.GetId(), req, sub, sendTo(ch))
	select {
	case r := <-ch:
		dr, _ := r.GetDiscoveryResponse()
		if got := names(t, dr.GetResources()); !slices.Equal(got, servedNames(&before.clusters)) {
			t.Errorf("wildcard request got %v, want every cluster", got)
		}
		sub.SetReturnedResources(r.GetReturnedResources())
	default:
		t.Fatal("a stream that became wildcard was not sent the clusters it lacks")
	}
	// And now it has everything of that version: the watch waits.
	c.CreateWatch(node.GetId(), req, sub, sendTo(ch))
	select {
	case r := <-ch:
		t.Errorf("an up-to-date wildcard request got a response: %v", r)
	default:
	}
}

// TestSotWFullListKeptOnlyWhenShared: a snapshot served to several nodes
// keeps one list of its resources for every full SotW response; a node's own
// snapshot lists them for each response and keeps none (distinct workloads'
// lists were most of what their snapshots added to the live heap).
func TestSotWFullListKeptOnlyWhenShared(t *testing.T) {
	t.Parallel()
	for _, shared := range []bool{false, true} {
		snap, _ := testSnapshots(t)
		if shared {
			snap.markShared()
		}
		c := newTestCache()
		var lists [][]*anypb.Any
		for _, node := range []string{"a", "b"} {
			if err := c.SetSnapshot(context.Background(), node, snap); err != nil {
				t.Fatal(err)
			}
			ch := make(chan cachev3.Response, 1)
			req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resourcev3.ClusterType}
			c.CreateWatch(node, req, stream.NewSotwSubscription(nil, true), sendTo(ch))
			dr, err := (<-ch).GetDiscoveryResponse()
			if err != nil {
				t.Fatal(err)
			}
			if got, want := names(t, dr.GetResources()), servedNames(&snap.clusters); !slices.Equal(got, want) {
				t.Fatalf("shared=%v: node %s got %v, want %v", shared, node, got, want)
			}
			lists = append(lists, dr.GetResources())
		}
		kept := snap.clusters.anys.Load() != nil
		if kept != shared {
			t.Errorf("shared=%v: the list of every cluster kept: %v", shared, kept)
		}
		if same := &lists[0][0] == &lists[1][0]; same != shared {
			t.Errorf("shared=%v: both nodes' responses have the same list: %v", shared, same)
		}
	}
}

// TestDeltaCacheSharesFullMaps: wildcard delta streams sent the same
// snapshot keep one map between them (10,000 replicas kept 20,000 maps of one
// entry, 11 MiB), and one stream's unsubscription, which go-control-plane
// writes into the map, does not reach the others.
func TestDeltaCacheSharesFullMaps(t *testing.T) {
	t.Parallel()
	before, _ := testSnapshots(t)
	before.markShared()
	c := newTestCache()
	ctx := context.Background()
	for _, node := range []string{"a", "b"} {
		if err := c.SetSnapshot(ctx, node, before); err != nil {
			t.Fatal(err)
		}
	}
	a := newDeltaStream(t, c, "a", resourcev3.ClusterType, []string{"*", "passthrough"})
	b := newDeltaStream(t, c, "b", resourcev3.ClusterType, nil)
	a.request(nil, nil)
	b.request(nil, nil)
	ma, mb := a.sub.ReturnedResources(), b.sub.ReturnedResources()
	if len(ma) != 1 || reflect.ValueOf(ma).UnsafePointer() != reflect.ValueOf(mb).UnsafePointer() {
		t.Fatalf("the streams keep %v and %v, want one shared map of one entry", ma, mb)
	}
	if r := a.request(nil, []string{"passthrough"}); !slices.Equal(deltaNames(r), []string{"passthrough"}) {
		t.Errorf("after unsubscribing passthrough while wildcard got %v, want it again", deltaNames(r))
	}
	if got := b.sub.ReturnedResources(); len(got) != 1 || got[returnedAll] != before.clusters.version {
		t.Errorf("another stream's unsubscription changed this stream's map to %v", got)
	}
	if r := b.request(nil, nil); r != nil {
		t.Errorf("the other stream was sent %v", deltaNames(r))
	}
}

// TestDeltaCacheWalksCommonAndOwnLists follows wildcard delta streams of
// several nodes, whose snapshots share a common list of services (at least
// minCommon of them) and have clusters of their own, through a change of
// both parts: a service changed, one gone and one added for every node, and
// per node own clusters changed, gone, added, and a service that leaves the
// common list for a version of the node's own. Each stream is sent exactly
// the clusters whose content it lacks and the names that are gone, as a
// lookup by name of the node's clusters before and after finds them.
func TestDeltaCacheWalksCommonAndOwnLists(t *testing.T) {
	t.Parallel()
	const nodes = 6
	svc := func(i int) string { return fmt.Sprintf("outbound|80|svc-%02d", i) }
	// One resource per name and content, as the control plane's hasher
	// shares them: the snapshots' common lists hold the same pointers.
	made := map[string]*Resource{}
	res := func(name string, endpoints int) *Resource {
		key := fmt.Sprintf("%s/%d", name, endpoints)
		if r := made[key]; r != nil {
			return r
		}
		r := testCluster(t, name, endpoints)
		made[key] = r
		return r
	}
	// Before: services 0–11; after: 3 changed, 5 gone, 12 added.
	// Node i's own clusters, before and after.
	mesh := func(after bool, i int) []*Resource {
		var out []*Resource
		for s := range 13 {
			switch {
			case !after && s == 12, after && s == 5:
				continue
			case after && s == 3:
				out = append(out, res(svc(s), 2))
			case after && i == 4 && s == 7:
				out = append(out, res(svc(s), 3)) // node 4's own version
			case after && i == 5 && s == 9:
				// node 5 no longer reaches svc-09
			default:
				out = append(out, res(svc(s), 1))
			}
		}
		inbound := 1 // changed for odd nodes
		if after && i%2 == 1 {
			inbound = 2
		}
		out = append(out, res(fmt.Sprintf("inbound|%d", 8080+i), inbound))
		// Among the services by name: gone for even nodes, added for odd.
		if (i%2 == 0) != after {
			out = append(out, res(fmt.Sprintf("outbound|80|svc-04a-%d", i), 1))
		}
		if !after || i%3 != 0 { // gone for nodes 0 and 3
			out = append(out, res(fmt.Sprintf("zz-local-%d", i), 1))
		}
		if after && i%3 == 1 { // added for nodes 1 and 4
			out = append(out, res(fmt.Sprintf("aa-first-%d", i), 1))
		}
		return out
	}
	for _, oneBuilder := range []bool{false, true} {
		var sbBefore, sbAfter SnapshotBuilder
		sb := &sbAfter
		if oneBuilder {
			sb = &sbBefore // the builder of the snapshots before builds those after
		}
		build := func(b *SnapshotBuilder, after bool) []*Snapshot {
			var out []*Snapshot
			withCommon := 0
			for i := range nodes {
				s, err := b.Snapshot(nil, mesh(after, i))
				if err != nil {
					t.Fatal(err)
				}
				if len(s.clusters.common) >= minCommon && len(s.clusters.own) > 0 {
					withCommon++
				}
				out = append(out, s)
			}
			if withCommon < nodes/2 {
				t.Fatalf("oneBuilder=%v after=%v: %d of %d nodes have a common list and their own clusters, want most",
					oneBuilder, after, withCommon, nodes)
			}
			return out
		}
		before, after := build(&sbBefore, false), build(sb, true)
		c := newTestCache()
		ctx := context.Background()
		for i := range nodes {
			node := fmt.Sprintf("n%d", i)
			if err := c.SetSnapshot(ctx, node, before[i]); err != nil {
				t.Fatal(err)
			}
			s := newDeltaStream(t, c, node, resourcev3.ClusterType, nil)
			s.request(nil, nil)
			if r := s.request(nil, nil); r != nil {
				t.Fatalf("node %d: an ACK with nothing new got %v", i, deltaNames(r))
			}
			if m := s.sub.ReturnedResources(); len(m) != 1 || m[returnedAll] != before[i].clusters.version {
				t.Fatalf("node %d: the stream keeps %v, want all of the version before", i, m)
			}
			if err := c.SetSnapshot(ctx, node, after[i]); err != nil {
				t.Fatal(err)
			}
			r := s.next()
			if r == nil {
				t.Fatalf("node %d: no response to the change", i)
			}
			// The expectation, by name lookup in the inputs.
			old, cur := map[string]string{}, map[string]*Resource{}
			for _, x := range mesh(false, i) {
				old[x.name] = x.hash
			}
			for _, x := range mesh(true, i) {
				cur[x.name] = x
			}
			var wantSent, wantRemoved []string
			for name, x := range cur {
				if h, ok := old[name]; !ok || h != x.hash {
					wantSent = append(wantSent, name)
				}
			}
			for name := range old {
				if cur[name] == nil {
					wantRemoved = append(wantRemoved, name)
				}
			}
			slices.Sort(wantSent)
			slices.Sort(wantRemoved)
			if got := deltaNames(r); !slices.Equal(got, wantSent) {
				t.Errorf("oneBuilder=%v node %d: sent %v, want %v", oneBuilder, i, got, wantSent)
			}
			for _, x := range r.GetResources() {
				if want := cur[x.GetName()]; want == nil || x.GetVersion() != want.hash || !proto.Equal(x.GetResource(), want.any) {
					t.Errorf("oneBuilder=%v node %d: %s sent at version %s, not the one after", oneBuilder, i, x.GetName(), x.GetVersion())
				}
			}
			if got := r.GetRemovedResources(); !slices.Equal(got, wantRemoved) {
				t.Errorf("oneBuilder=%v node %d: removed %v, want %v", oneBuilder, i, got, wantRemoved)
			}
			if r.GetSystemVersionInfo() != after[i].clusters.version {
				t.Errorf("oneBuilder=%v node %d: response of version %q, want %q", oneBuilder, i, r.GetSystemVersionInfo(), after[i].clusters.version)
			}
			if r := s.request(nil, nil); r != nil {
				t.Errorf("oneBuilder=%v node %d: the ACK of the change got %v", oneBuilder, i, deltaNames(r))
			}
		}
	}
}
