package controlplane

import (
	"context"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
)

// testSnapshots builds the matrix mesh's snapshot of node and that of a
// second mesh where the service "web" is gone (a listener and a cluster
// fewer) and "db" has one more endpoint (its cluster differs).
func testSnapshots(t *testing.T, node string) (before, after *servedSnapshot) {
	t.Helper()
	m := loadMesh(t, "testdata/matrix.yaml")
	a, err := buildSnapshots(m)
	if err != nil {
		t.Fatal(err)
	}
	m2 := loadMesh(t, "testdata/matrix.yaml")
	m2.Services = slices.DeleteFunc(m2.Services, func(s Service) bool { return s.Name == "web" })
	for i := range m2.Services {
		if m2.Services[i].Name == "db" {
			m2.Services[i].Endpoints = append(m2.Services[i].Endpoints, Endpoint{Address: netip.MustParseAddr("203.0.113.99")})
		}
	}
	for i := range m2.Workloads {
		m2.Workloads[i].Reach = slices.DeleteFunc(m2.Workloads[i].Reach, func(r string) bool { return r == "web" })
	}
	b, err := buildSnapshots(m2)
	if err != nil {
		t.Fatal(err)
	}
	return a.nodes[node].snapshot, b.nodes[node].snapshot
}

func newTestCache() *servingCache {
	return newServingCache(slog.New(slog.DiscardHandler), time.Minute, func(string, string) string { return "" }, func(string) {})
}

func servedNames(t *servedType) []string {
	var out []string
	for _, r := range t.resources {
		out = append(out, r.name)
	}
	return out
}

// deltaStream plays go-control-plane's delta server for one type: it keeps
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
}

func newDeltaStream(t *testing.T, c *servingCache, node, typeURL string, subscribe []string) *deltaStream {
	return &deltaStream{t: t, c: c, node: &corev3.Node{Id: node}, typ: typeURL,
		sub: stream.NewDeltaSubscription(subscribe, nil, nil, true), ch: make(chan cachev3.DeltaResponse, 4)}
}

// request opens a watch (after updating the subscription, as the server does)
// and returns the response it got at once, or nil.
func (s *deltaStream) request(subscribe, unsubscribe []string) *discoveryv3.DeltaDiscoveryResponse {
	s.t.Helper()
	s.sub.UpdateResourceSubscriptions(subscribe, unsubscribe)
	nonce := ""
	if s.nonce > 0 {
		nonce = "n"
	}
	req := &discoveryv3.DeltaDiscoveryRequest{Node: s.node, TypeUrl: s.typ, ResponseNonce: nonce,
		ResourceNamesSubscribe: subscribe, ResourceNamesUnsubscribe: unsubscribe}
	if _, err := s.c.CreateDeltaWatch(req, s.sub, s.ch); err != nil {
		s.t.Fatal(err)
	}
	return s.next()
}

// next returns the pending response, or nil, and records what it returned.
func (s *deltaStream) next() *discoveryv3.DeltaDiscoveryResponse {
	s.t.Helper()
	select {
	case r := <-s.ch:
		s.nonce++
		s.sub.SetReturnedResources(r.GetNextVersionMap())
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
	before, after := testSnapshots(t, "redirect-dual")
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
	for _, x := range after.clusters.resources {
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
	before, _ := testSnapshots(t, "redirect-dual")
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

// TestDeltaCacheReleasesSentState checks that the served state a stream's map
// refers to is released once no stream holds a map naming it.
func TestDeltaCacheReleasesSentState(t *testing.T) {
	before, after := testSnapshots(t, "redirect-dual")
	c := newTestCache()
	ctx := context.Background()
	if err := c.SetSnapshot(ctx, "redirect-dual", before); err != nil {
		t.Fatal(err)
	}
	s := newDeltaStream(t, c, "redirect-dual", resourcev3.ClusterType, nil)
	s.request(nil, nil)
	s.request(nil, nil) // ACK: the watch is open
	sent := func() []string {
		n := c.node("redirect-dual")
		defer n.mu.Unlock()
		var out []string
		for k := range n.sent {
			out = append(out, k.version)
		}
		return out
	}
	if got := sent(); !slices.Equal(got, []string{before.clusters.version}) {
		t.Fatalf("sent = %v, want the first version", got)
	}
	if err := c.SetSnapshot(ctx, "redirect-dual", after); err != nil {
		t.Fatal(err)
	}
	if s.next() == nil { // the stream now holds a map naming the new version only
		t.Fatal("no response to the change")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(sent(), []string{after.clusters.version}) {
		if time.Now().After(deadline) {
			t.Fatalf("sent = %v, want only the version the stream holds", sent())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	runtime.KeepAlive(s)
}

// TestSotWCacheNamedAndWildcard checks SotW requests that name resources (only
// those are sent) and a stream that goes back to wildcard at the same version
// (it is sent what it lacks).
func TestSotWCacheNamedAndWildcard(t *testing.T) {
	t.Parallel()
	before, _ := testSnapshots(t, "redirect-dual")
	c := newTestCache()
	if err := c.SetSnapshot(context.Background(), "redirect-dual", before); err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "redirect-dual"}
	ch := make(chan cachev3.Response, 4)
	sub := stream.NewSotwSubscription([]string{"passthrough", "blackhole", "no-such"}, true)
	req := &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"passthrough", "blackhole", "no-such"}}
	if _, err := c.CreateWatch(req, sub, ch); err != nil {
		t.Fatal(err)
	}
	r := <-ch
	dr, _ := r.GetDiscoveryResponse()
	if got := names(t, dr.GetResources()); !slices.Equal(got, []string{"blackhole", "passthrough"}) {
		t.Errorf("named request got %v, want blackhole and passthrough", got)
	}
	sub.SetReturnedResources(r.GetReturnedResources())

	// Same version, now wildcard: the rest is missing, so it is sent.
	sub.SetResourceSubscription([]string{"*"})
	req = &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, VersionInfo: before.clusters.version, ResourceNames: []string{"*"}}
	if _, err := c.CreateWatch(req, sub, ch); err != nil {
		t.Fatal(err)
	}
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
	if _, err := c.CreateWatch(req, sub, ch); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-ch:
		t.Errorf("an up-to-date wildcard request got a response: %v", r)
	default:
	}
}
