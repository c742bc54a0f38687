package controlplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/detour-mesh/detour/controlplane/xds"
)

// testTimeout bounds every wait of these tests.
const testTimeout = 20 * time.Second

// testServer is a Server serving ADS on a loopback port.
type testServer struct {
	*Server
	addr string
}

func startServer(t *testing.T, opts xds.Options) *testServer {
	t.Helper()
	s := NewServer(opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeXDS(l) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-done; err != nil {
			t.Errorf("ServeXDS: %v", err)
		}
	})
	return &testServer{Server: s, addr: l.Addr().String()}
}

func (s *testServer) update(t *testing.T, m *Mesh) xds.UpdateResult {
	t.Helper()
	res, err := s.Update(context.Background(), m)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	return res
}

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// sotwClient connects go-control-plane's own SotW ADS client for one type.
func sotwClient(t *testing.T, ctx context.Context, conn *grpc.ClientConn, node, typeURL string) sotwclient.ADSClient {
	t.Helper()
	c := sotwclient.NewADSClient(ctx, &corev3.Node{Id: node}, typeURL)
	if err := c.InitConnect(conn); err != nil {
		t.Fatalf("InitConnect: %v", err)
	}
	return c
}

func names(t *testing.T, resources []*anypb.Any) []string {
	t.Helper()
	var out []string
	for _, a := range resources {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		switch r := m.(type) {
		case *listenerv3.Listener:
			out = append(out, r.GetName())
		case *clusterv3.Cluster:
			out = append(out, r.GetName())
		default:
			t.Fatalf("unexpected resource %T", m)
		}
	}
	slices.Sort(out)
	return out
}

func wantNames(t *testing.T, m *Mesh, node, typeURL string) []string {
	t.Helper()
	r, err := m.Resources(node)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	if typeURL == resourcev3.ListenerType {
		for _, l := range r.Listeners {
			out = append(out, l.GetName())
		}
	} else {
		for _, c := range r.Clusters {
			out = append(out, c.GetName())
		}
	}
	slices.Sort(out)
	return out
}

// debugNodes reads /debug/nodes.
func debugNodes(t *testing.T, s *Server) map[string]xds.NodeStatus {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/nodes", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/debug/nodes: %d", rec.Code)
	}
	var out struct {
		Nodes []xds.NodeStatus `json:"nodes"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	m := map[string]xds.NodeStatus{}
	for _, n := range out.Nodes {
		m[n.NodeID] = n
	}
	return m
}

// waitFor polls cond (a state the server reaches asynchronously after a
// client's ACK) with a bounded deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func metricsText(t *testing.T, s *Server) string {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestADSFirstFetchAndACK(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{})
	m := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m)
	ctx := testCtx(t)
	conn := dial(t, s.addr, nil)
	for _, typeURL := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		c := sotwClient(t, ctx, conn, "redirect-dual", typeURL)
		resp, err := c.Fetch()
		if err != nil {
			t.Fatalf("Fetch %s: %v", typeURL, err)
		}
		if got, want := names(t, resp.Resources), wantNames(t, m, "redirect-dual", typeURL); !slices.Equal(got, want) {
			t.Errorf("%s: got %v, want %v", typeURL, got, want)
		}
		if err := c.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	v, _ := s.Versions("redirect-dual")
	waitFor(t, "both types ACKed", func() bool {
		n := debugNodes(t, s.Server)["redirect-dual"]
		return n.Resources["listeners"].Acked == v.Listeners && n.Resources["clusters"].Acked == v.Clusters
	})
	n := debugNodes(t, s.Server)["redirect-dual"]
	if !n.InMesh || len(n.Streams) != 2 || !n.Resources["listeners"].InSync || n.Resources["listeners"].NACKs != 0 {
		t.Errorf("/debug/nodes entry = %+v", n)
	}
	text := metricsText(t, s.Server)
	for _, want := range []string{
		`detour_xds_connected_proxies{protocol="sotw"} 2`,
		`detour_xds_pushes_total{type="listeners"} 1`,
		`detour_xds_pushes_total{type="clusters"} 1`,
		`detour_config_ack_latency_seconds_count{type="listeners"} 1`,
		`detour_config_updates_total{result="applied"} 1`,
		`detour_snapshot_build_seconds_count 1`,
		`detour_snapshot_nodes 13`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestADSHugeNACKIsBounded: a proxy's NACK message is kept in /debug/nodes
// and logged at every NACK (one per back-off period), so its size is bounded:
// a 3 MB message was logged whole twice in 5 s and kept whole per node and
// type. Envoy's message lists every rejected resource, so a fleet-wide
// rejection of a thousand listeners is about 150 KB per proxy.
func TestADSHugeNACKIsBounded(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	var mu sync.Mutex
	s := startServer(t, xds.Options{NACKBackoff: time.Hour, Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))})
	s.update(t, loadMesh(t, "testdata/matrix.yaml"))
	c := sotwClient(t, testCtx(t), dial(t, s.addr, nil), "tproxy-ipv4", resourcev3.ListenerType)
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	huge := "listener inbound: transparent listeners need CAP_NET_ADMIN; " + strings.Repeat("x", 3_000_000)
	if err := c.Nack(huge); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "NACK recorded", func() bool {
		return debugNodes(t, s.Server)["tproxy-ipv4"].Resources["listeners"].NACKs == 1
	})
	// The tracker logs the NACK after it has recorded it.
	waitFor(t, "NACK logged", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(logs.String(), "proxy rejected config (NACK)")
	})
	got := debugNodes(t, s.Server)["tproxy-ipv4"].Resources["listeners"].LastNACK
	if len(got) > 2048 || !strings.HasPrefix(got, "listener inbound: transparent listeners need CAP_NET_ADMIN; xxx") || !strings.HasSuffix(got, fmt.Sprintf("… (%d bytes)", len(huge))) {
		t.Errorf("/debug/nodes lastNack is %d bytes (%.100q…), want the message's first bytes and its size", len(got), got)
	}
	mu.Lock()
	defer mu.Unlock()
	if logs.Len() > 8192 {
		t.Errorf("the log holds %d bytes after one NACK, want the NACK logged in a few KB", logs.Len())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func TestADSNACKIsBackedOff(t *testing.T) {
	t.Parallel()
	const backoff = 300 * time.Millisecond
	s := startServer(t, xds.Options{NACKBackoff: backoff})
	m := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m)
	ctx := testCtx(t)
	c := sotwClient(t, ctx, dial(t, s.addr, nil), "tproxy-ipv4", resourcev3.ListenerType)
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		nacked := time.Now()
		if err := c.Nack("listener inbound: transparent listeners need CAP_NET_ADMIN"); err != nil {
			t.Fatal(err)
		}
		resp, err := c.Fetch()
		if err != nil {
			t.Fatal(err)
		}
		// The same config comes back, but not before the back-off: a NACK
		// loop would resend it at once.
		if waited := time.Since(nacked); waited < backoff {
			t.Errorf("NACK %d: config resent after %v, before the %v back-off", i, waited, backoff)
		}
		if got, want := names(t, resp.Resources), wantNames(t, m, "tproxy-ipv4", resourcev3.ListenerType); !slices.Equal(got, want) {
			t.Errorf("resent listeners %v, want %v", got, want)
		}
	}
	n := debugNodes(t, s.Server)["tproxy-ipv4"].Resources["listeners"]
	v, _ := s.Versions("tproxy-ipv4")
	if n.NACKs != 2 || n.Nacked != v.Listeners || !strings.Contains(n.LastNACK, "CAP_NET_ADMIN") || n.InSync {
		t.Errorf("/debug/nodes listeners = %+v", n)
	}
	text := metricsText(t, s.Server)
	for _, want := range []string{
		`detour_xds_nacks_total{node_id="tproxy-ipv4",type="listeners"} 2`,
		`detour_xds_nack_backoffs_total{type="listeners"} 2`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// A new config ends the back-off at once: the NACK is answered by the
	// change (the test would time out if the hour-long back-off applied).
	s2 := startServer(t, xds.Options{NACKBackoff: time.Hour})
	s2.update(t, m)
	c2 := sotwClient(t, ctx, dial(t, s2.addr, nil), "tproxy-ipv4", resourcev3.ListenerType)
	if _, err := c2.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := c2.Nack("rejected"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "NACK recorded", func() bool {
		return debugNodes(t, s2.Server)["tproxy-ipv4"].Resources["listeners"].NACKs == 1
	})
	fixed := loadMesh(t, "testdata/matrix.yaml")
	fixed.Workloads[3].TransparentProxy.Mode = "redirect" // tproxy-ipv4
	res := s2.update(t, fixed)
	if !slices.Contains(res.Pushed, "tproxy-ipv4") {
		t.Fatalf("update pushed %v, want tproxy-ipv4", res.Pushed)
	}
	resp, err := c2.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range resp.Resources {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		if l.GetTransparent().GetValue() {
			t.Errorf("listener %s still transparent after the fix", l.GetName())
		}
	}
}

// TestNACKAfterRestartIsNotInSync: a proxy that restarts (a new stream, nothing
// accepted yet) and rejects the config its predecessor had ACKed is not shown
// in sync: /debug/nodes reports what the connected proxy runs, not what an
// earlier one ACKed. SotW and delta.
func TestNACKAfterRestartIsNotInSync(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{NACKBackoff: time.Hour})
	s.update(t, loadMesh(t, "testdata/matrix.yaml"))
	ctx := testCtx(t)
	listeners := func(node string) xds.TypeStatus { return debugNodes(t, s.Server)[node].Resources["listeners"] }

	const node = "redirect-ipv4"
	v, _ := s.Versions(node)
	conn1, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c := sotwClient(t, ctx, conn1, node, resourcev3.ListenerType)
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ACK", func() bool { return listeners(node).InSync })
	conn1.Close()
	waitFor(t, "stream closed", func() bool { return len(debugNodes(t, s.Server)[node].Streams) == 0 })
	c2 := sotwClient(t, ctx, dial(t, s.addr, nil), node, resourcev3.ListenerType)
	if _, err := c2.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := c2.Nack("unknown field in listener"); err != nil { // version_info "": nothing accepted
		t.Fatal(err)
	}
	waitFor(t, "NACK", func() bool { return listeners(node).NACKs == 1 })
	if l := listeners(node); l.InSync || l.Acked != "" || l.Nacked != v.Listeners {
		t.Errorf("SotW: after the restarted proxy's NACK /debug/nodes says %+v; want not in sync, nothing acked, %s nacked", l, v.Listeners)
	}

	const dnode = "redirect-dual"
	dv, _ := s.Versions(dnode)
	deltaStream := func(conn *grpc.ClientConn) (discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, *discoveryv3.DeltaDiscoveryResponse) {
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: dnode}, TypeUrl: resourcev3.ListenerType}); err != nil {
			t.Fatal(err)
		}
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return st, r
	}
	dconn1, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	st, r := deltaStream(dconn1)
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "delta ACK", func() bool { return listeners(dnode).InSync })
	dconn1.Close()
	waitFor(t, "delta stream closed", func() bool { return len(debugNodes(t, s.Server)[dnode].Streams) == 0 })
	st, r = deltaStream(dial(t, s.addr, nil))
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: r.GetNonce(), ErrorDetail: &rpcstatus.Status{Message: "unknown field in listener"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "delta NACK", func() bool { return listeners(dnode).NACKs == 1 })
	if l := listeners(dnode); l.InSync || l.Acked == dv.Listeners {
		t.Errorf("delta: after the restarted proxy's NACK /debug/nodes says %+v; want not in sync, %s not acked", l, dv.Listeners)
	}
}

// rawStream is an ADS stream driven by hand, for what the SotW client cannot
// express (a reconnect that reports the version it already has).
func rawStream(t *testing.T, ctx context.Context, conn *grpc.ClientConn) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestADSReconnect(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{})
	m := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m)
	ctx := testCtx(t)
	const node = "redirect-ipv4"

	// First connection: fetch and ACK, then drop the connection.
	conn1, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c := sotwClient(t, ctx, conn1, node, resourcev3.ClusterType)
	first, err := c.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(); err != nil {
		t.Fatal(err)
	}
	v1, _ := s.Versions(node)
	waitFor(t, "ACK", func() bool { return debugNodes(t, s.Server)[node].Resources["clusters"].Acked == v1.Clusters })
	conn1.Close()
	waitFor(t, "stream closed", func() bool { return len(debugNodes(t, s.Server)[node].Streams) == 0 })

	// A fresh client (no version) gets the whole config again.
	c2 := sotwClient(t, ctx, dial(t, s.addr, nil), node, resourcev3.ClusterType)
	again, err := c2.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names(t, first.Resources), names(t, again.Resources)) {
		t.Errorf("after reconnect got %v, want %v", names(t, again.Resources), names(t, first.Resources))
	}

	// An Envoy reconnecting with the version it has is sent that version again
	// on the new stream (the stream has no state yet), and then follows changes.
	st := rawStream(t, ctx, dial(t, s.addr, nil))
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resourcev3.ClusterType, VersionInfo: v1.Clusters}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVersionInfo() != v1.Clusters {
		t.Errorf("reconnected stream received version %q, want the current %q", resp.GetVersionInfo(), v1.Clusters)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	changed := loadMesh(t, "testdata/matrix.yaml")
	changed.Services[0].Endpoints = changed.Services[0].Endpoints[1:] // db loses 203.0.113.21
	s.update(t, changed)
	if resp, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	v2, _ := s.Versions(node)
	if resp.GetVersionInfo() != v2.Clusters || v2.Clusters == v1.Clusters {
		t.Errorf("reconnected stream received version %q after the change, want the new %q (old %q)", resp.GetVersionInfo(), v2.Clusters, v1.Clusters)
	}
}

func TestADSChangeReachesOnlyAffectedNodes(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{})
	m := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m)
	ctx := testCtx(t)
	conn := dial(t, s.addr, nil)
	// tproxy-ipv4 reaches only db; inbound-only reaches nothing.
	nodes := []string{"tproxy-ipv4", "inbound-only", "redirect-ipv6"}
	streams := map[string]discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient{}
	for _, n := range nodes {
		st := rawStream(t, ctx, conn)
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: n}, TypeUrl: resourcev3.ClusterType}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		streams[n] = st
	}

	// Change web's endpoints: only nodes that reach web over IPv4 are affected,
	// none of these three.
	web := loadMesh(t, "testdata/matrix.yaml")
	web.Services[1].Selector = map[string]string{"app": "nobody"}
	res := s.update(t, web)
	for _, n := range nodes {
		if slices.Contains(res.Pushed, n) {
			t.Errorf("a change to web pushed %s, which does not reach web", n)
		}
	}
	if !slices.Contains(res.Pushed, "redirect-ipv4") || !slices.Contains(res.Pushed, "redirect-dual") {
		t.Errorf("pushed %v, want redirect-ipv4 and redirect-dual among them", res.Pushed)
	}

	// Change db's endpoints: tproxy-ipv4 and redirect-ipv6 are affected.
	db := loadMesh(t, "testdata/matrix.yaml")
	db.Services[1].Selector = web.Services[1].Selector
	db.Services[0].Endpoints = db.Services[0].Endpoints[:1]
	res = s.update(t, db)
	if !slices.Contains(res.Pushed, "tproxy-ipv4") || !slices.Contains(res.Pushed, "redirect-ipv6") || slices.Contains(res.Pushed, "inbound-only") {
		t.Errorf("a change to db pushed %v", res.Pushed)
	}
	// The first thing each affected stream receives after its ACK is the db
	// change: the web change was never sent to it.
	for _, n := range []string{"tproxy-ipv4", "redirect-ipv6"} {
		resp, err := streams[n].Recv()
		if err != nil {
			t.Fatal(err)
		}
		v, _ := s.Versions(n)
		if resp.GetVersionInfo() != v.Clusters {
			t.Errorf("%s received version %q, want %q", n, resp.GetVersionInfo(), v.Clusters)
		}
	}
	// inbound-only received nothing: a third change that affects it arrives
	// as its first response.
	only := loadMesh(t, "testdata/matrix.yaml")
	only.Services[1].Selector = web.Services[1].Selector
	only.Services[0].Endpoints = db.Services[0].Endpoints
	for i := range only.Workloads {
		if only.Workloads[i].NodeID == "inbound-only" {
			only.Workloads[i].Inbound = append(only.Workloads[i].Inbound, InboundPort{Port: 9000, AppPort: 9000, Protocol: ProtocolTCP})
		}
	}
	res = s.update(t, only)
	if !slices.Equal(res.Pushed, []string{"inbound-only"}) {
		t.Errorf("pushed %v, want only inbound-only", res.Pushed)
	}
	resp, err := streams["inbound-only"].Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(t, resp.GetResources()); !slices.Contains(got, InboundClusterName(9000)) {
		t.Errorf("inbound-only's first response after its ACK has clusters %v, want the new %s", got, InboundClusterName(9000))
	}
}

func TestADSInvalidUpdateKeepsServing(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{})
	m := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m)
	before, _ := s.Versions("redirect-ipv4")
	bad := loadMesh(t, "testdata/matrix.yaml")
	bad.Workloads[0].Reach = []string{"missing"}
	if _, err := s.Update(context.Background(), bad); err == nil || !strings.Contains(err.Error(), `workloads[0].reach[0]: "missing" is not the name of a service`) {
		t.Fatalf("Update(invalid) = %v", err)
	}
	s.Invalid(errors.New("mesh file x: (document): is not valid YAML"))
	after, _ := s.Versions("redirect-ipv4")
	if after != before {
		t.Errorf("versions changed after a rejected update: %v → %v", before, after)
	}
	if text := metricsText(t, s.Server); !strings.Contains(text, `detour_config_updates_total{result="rejected"} 2`) {
		t.Errorf("/metrics does not count 2 rejected updates")
	}
	// Unchanged meshes are counted as such and push nothing.
	if res := s.update(t, loadMesh(t, "testdata/matrix.yaml")); len(res.Pushed) != 0 || res.Unchanged != len(m.Workloads) {
		t.Errorf("re-applying the same mesh = %+v", res)
	}
}

func TestDeltaSubscribeUnsubscribe(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{})
	m := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m)
	ctx := testCtx(t)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, s.addr, nil)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const node = "redirect-dual"
	db, web := ServiceClusterName("db", 5432), ServiceClusterName("web", 80)
	recv := func() *discoveryv3.DeltaDiscoveryResponse {
		t.Helper()
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	ack := func(r *discoveryv3.DeltaDiscoveryResponse) {
		t.Helper()
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	got := func(r *discoveryv3.DeltaDiscoveryResponse) []string {
		var out []string
		for _, res := range r.GetResources() {
			out = append(out, res.GetName())
			if res.GetVersion() == "" {
				t.Errorf("delta resource %s has no version", res.GetName())
			}
		}
		slices.Sort(out)
		return out
	}

	// Subscribe to db only.
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{db}}); err != nil {
		t.Fatal(err)
	}
	r := recv()
	if g := got(r); !slices.Equal(g, []string{db}) {
		t.Fatalf("subscribed to %s, received %v", db, g)
	}
	ack(r)
	v, _ := s.Versions(node)
	waitFor(t, "delta ACK", func() bool { return debugNodes(t, s.Server)[node].Resources["clusters"].Acked == v.Clusters })

	// Adding web sends web only.
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{web}}); err != nil {
		t.Fatal(err)
	}
	r = recv()
	if g := got(r); !slices.Equal(g, []string{web}) {
		t.Fatalf("subscribed to %s too, received %v", web, g)
	}
	ack(r)

	// Unsubscribe db (and subscribe passthrough: its response proves the
	// request was handled); then change db and web: only web is sent.
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType,
		ResourceNamesUnsubscribe: []string{db}, ResourceNamesSubscribe: []string{ClusterPassthrough}}); err != nil {
		t.Fatal(err)
	}
	r = recv()
	if g := got(r); !slices.Equal(g, []string{ClusterPassthrough}) || len(r.GetRemovedResources()) != 0 {
		t.Fatalf("unsubscribe %s + subscribe %s: received %v, removed %v", db, ClusterPassthrough, g, r.GetRemovedResources())
	}
	ack(r)
	changed := loadMesh(t, "testdata/matrix.yaml")
	changed.Services[0].Endpoints = changed.Services[0].Endpoints[1:] // db
	changed.Workloads[0].Labels = nil                                 // redirect-ipv4 leaves web
	s.update(t, changed)
	r = recv()
	if g := got(r); !slices.Equal(g, []string{web}) {
		t.Errorf("after unsubscribing %s, a change to both sent %v", db, g)
	}
	ack(r)

	// Removing the service web removes the resource.
	gone := loadMesh(t, "testdata/matrix.yaml")
	gone.Services[0].Endpoints = changed.Services[0].Endpoints
	gone.Workloads[0].Labels = nil
	gone.Services = slices.Delete(gone.Services, 1, 2)
	for i := range gone.Workloads {
		gone.Workloads[i].Reach = slices.DeleteFunc(gone.Workloads[i].Reach, func(s string) bool { return s == "web" })
	}
	s.update(t, gone)
	r = recv()
	if !slices.Equal(r.GetRemovedResources(), []string{web}) || len(r.GetResources()) != 0 {
		t.Errorf("after removing web: resources %v, removed %v", got(r), r.GetRemovedResources())
	}
	if text := metricsText(t, s.Server); !strings.Contains(text, `detour_xds_connected_proxies{protocol="delta"} 1`) {
		t.Errorf("/metrics does not count the delta stream")
	}
}

func TestNodeIdentityMTLS(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	serverTLS, err := TLSConfig(pki.serverCert, pki.serverKey, pki.caFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, xds.Options{TLS: serverTLS})
	m := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m)
	ctx := testCtx(t)

	// A certificate for redirect-ipv4 gets redirect-ipv4's config.
	conn := dial(t, s.addr, pki.clientCreds(t, "redirect-ipv4"))
	c := sotwClient(t, ctx, conn, "redirect-ipv4", resourcev3.ListenerType)
	resp, err := c.Fetch()
	if err != nil {
		t.Fatalf("own node over mTLS: %v", err)
	}
	if got, want := names(t, resp.Resources), wantNames(t, m, "redirect-ipv4", resourcev3.ListenerType); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}

	// The same certificate asking for another node is refused, SotW and delta,
	// and receives nothing.
	other := sotwClient(t, ctx, conn, "redirect-dual", resourcev3.ListenerType)
	if resp, err := other.Fetch(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("SotW request for another node: resp %v, err %v; want PermissionDenied", resp, err)
	}
	dst, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "redirect-dual"}, TypeUrl: resourcev3.ListenerType}); err != nil {
		t.Fatal(err)
	}
	if resp, err := dst.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("delta request for another node: resp %v, err %v; want PermissionDenied", resp, err)
	}
	if text := metricsText(t, s.Server); !strings.Contains(text, "detour_xds_identity_rejections_total 2") {
		t.Errorf("/metrics does not count 2 identity rejections")
	}

	// No client certificate: the handshake fails.
	noCert := credentials.NewTLS(&tls.Config{RootCAs: pki.pool, ServerName: "detour-control-plane"})
	c3 := sotwclient.NewADSClient(ctx, &corev3.Node{Id: "redirect-ipv4"}, resourcev3.ListenerType)
	err = c3.InitConnect(dial(t, s.addr, noCert))
	if err == nil {
		_, err = c3.Fetch()
	}
	if err == nil {
		t.Error("a client without a certificate was served")
	}
}

func TestHTTPEndpointsAndHealth(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{})
	h := s.Handler()
	get := func(path string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code
	}
	hc := healthpb.NewHealthClient(dial(t, s.addr, nil))
	health := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		r, err := hc.Check(testCtx(t), &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetStatus()
	}
	if get("/healthz") != 200 || get("/readyz") != 503 {
		t.Errorf("before the first mesh: healthz %d, readyz %d; want 200, 503", get("/healthz"), get("/readyz"))
	}
	if st := health("envoy.service.discovery.v3.AggregatedDiscoveryService"); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("gRPC health before the first mesh = %v", st)
	}
	s.update(t, loadMesh(t, "testdata/matrix.yaml"))
	if get("/readyz") != 200 || get("/metrics") != 200 || get("/debug/nodes") != 200 {
		t.Errorf("after the first mesh: readyz %d, metrics %d, debug/nodes %d", get("/readyz"), get("/metrics"), get("/debug/nodes"))
	}
	if st := health(""); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health after the first mesh = %v", st)
	}
	if n := debugNodes(t, s.Server); len(n) != 13 || n["redirect-ipv4"].Resources["listeners"].Served == "" {
		t.Errorf("/debug/nodes lists %d nodes: %+v", len(n), n["redirect-ipv4"])
	}
}

func TestRemovedNodeKeepsConfigWhileConnected(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{})
	m := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m)
	ctx := testCtx(t)
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c := sotwClient(t, ctx, conn, "inbound-only", resourcev3.ListenerType)
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	smaller := loadMesh(t, "testdata/matrix.yaml")
	smaller.Workloads = slices.DeleteFunc(smaller.Workloads, func(w Workload) bool { return w.NodeID == "inbound-only" })
	res := s.update(t, smaller)
	if !slices.Equal(res.Removed, []string{"inbound-only"}) {
		t.Fatalf("removed = %v", res.Removed)
	}
	// The snapshot stays while the proxy is connected: a second stream of
	// the node is still served, and the node is still counted.
	conn2 := dial(t, s.addr, nil)
	c2 := sotwClient(t, ctx, conn2, "inbound-only", resourcev3.ListenerType)
	if resp, err := c2.Fetch(); err != nil || len(resp.Resources) == 0 {
		t.Errorf("a second stream of the connected removed node got %v, %v; want its listeners", resp, err)
	}
	snapshotNodes := func() string {
		for _, line := range strings.Split(metricsText(t, s.Server), "\n") {
			if strings.HasPrefix(line, "detour_snapshot_nodes ") {
				return line
			}
		}
		return ""
	}
	if got, want := snapshotNodes(), fmt.Sprintf("detour_snapshot_nodes %d", len(m.Workloads)); got != want {
		t.Errorf("metrics: %q while the removed node is connected, want %q", got, want)
	}
	if n := debugNodes(t, s.Server)["inbound-only"]; n.InMesh {
		t.Errorf("/debug/nodes still has inbound-only in the mesh")
	}
	conn.Close()
	conn2.Close()
	waitFor(t, "snapshot cleared after disconnect", func() bool {
		return snapshotNodes() == fmt.Sprintf("detour_snapshot_nodes %d", len(smaller.Workloads))
	})
	if _, ok := debugNodes(t, s.Server)["inbound-only"]; ok {
		t.Errorf("/debug/nodes still lists the removed, disconnected node")
	}
}

// TestResponsesAreTheGeneratedResources checks what a SotW client receives
// against the generated resources, field by field (responses reuse the
// resources' encodings instead of the cache marshalling them; the xds
// package's tests check the pre-encoded responses themselves).
func TestResponsesAreTheGeneratedResources(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{})
	m := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m)
	want, err := m.Resources("tproxy-dual")
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	c := sotwClient(t, ctx, dial(t, s.addr, nil), "tproxy-dual", resourcev3.ListenerType)
	resp, err := c.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != len(want.Listeners) {
		t.Fatalf("received %d listeners, want %d", len(resp.Resources), len(want.Listeners))
	}
	for i, a := range resp.Resources {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		// Both are sorted by name.
		if !proto.Equal(&l, want.Listeners[i]) {
			t.Errorf("listener %d: received %v, want %v", i, &l, want.Listeners[i])
		}
	}

}

// TestExcludedWorkloadsAreCountedAndListed: workloads a source left out are
// counted in detour_workloads_excluded and listed, with the reason, in
// /debug/nodes; the next mesh replaces them.
func TestExcludedWorkloadsAreCountedAndListed(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{})
	m := loadMesh(t, "testdata/matrix.yaml")
	m.Excluded = []Excluded{{NodeID: "dns-1.shop", Reason: `workloads[0].transparentProxy.dns.capture: "all" is not served`}}
	s.update(t, m)
	if text := metricsText(t, s.Server); !strings.Contains(text, "detour_workloads_excluded 1\n") {
		t.Errorf("/metrics does not count 1 excluded workload")
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/nodes", nil))
	var out struct {
		Excluded []Excluded `json:"excluded"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(out.Excluded, m.Excluded) {
		t.Errorf("/debug/nodes excluded = %+v, want %+v", out.Excluded, m.Excluded)
	}
	m2 := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m2)
	if text := metricsText(t, s.Server); !strings.Contains(text, "detour_workloads_excluded 0\n") {
		t.Errorf("/metrics still counts excluded workloads after a mesh without any")
	}
}

// TestMetricsBeforeAnyProxy: every series a dashboard or an alert reads is
// exported, at zero, before the first proxy connects (a query on a series
// that does not exist yet has no data, and an alert on it never fires);
// the NACK counter's series come with the node ids that NACK.
func TestMetricsBeforeAnyProxy(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{})
	text := metricsText(t, s.Server)
	for _, want := range []string{
		`detour_xds_connected_proxies{protocol="sotw"} 0`,
		`detour_xds_connected_proxies{protocol="delta"} 0`,
		`detour_xds_pushes_total{type="listeners"} 0`,
		`detour_xds_pushes_total{type="clusters"} 0`,
		`detour_xds_nack_backoffs_total{type="listeners"} 0`,
		`detour_xds_nack_backoffs_total{type="clusters"} 0`,
		`detour_config_ack_latency_seconds_count{type="listeners"} 0`,
		`detour_config_ack_latency_seconds_count{type="clusters"} 0`,
		`detour_config_updates_total{result="rejected"} 0`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics before any proxy lacks %s", want)
		}
	}
}

// TestNodeSeriesGoWithTheNode: a node's NACK series goes when the node has
// left the mesh and closed its streams (pods come and go, and a series per
// node id ever seen grows without end); a node id longer than
// xds.MaxNodeID is refused.
func TestNodeSeriesGoWithTheNode(t *testing.T) {
	t.Parallel()
	s := startServer(t, xds.Options{NACKBackoff: time.Millisecond})
	m := loadMesh(t, "testdata/matrix.yaml")
	s.update(t, m)
	ctx, cancel := context.WithCancel(testCtx(t))
	conn := dial(t, s.addr, nil)
	c := sotwClient(t, ctx, conn, "tproxy-ipv4", resourcev3.ListenerType)
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := c.Nack("rejected"); err != nil {
		t.Fatal(err)
	}
	const series = `detour_xds_nacks_total{node_id="tproxy-ipv4",type="listeners"} 1`
	waitFor(t, "the NACK counted", func() bool { return strings.Contains(metricsText(t, s.Server), series) })

	without := loadMesh(t, "testdata/matrix.yaml")
	without.Workloads = slices.DeleteFunc(without.Workloads, func(w Workload) bool { return w.NodeID == "tproxy-ipv4" })
	s.update(t, without)
	if !strings.Contains(metricsText(t, s.Server), series) {
		t.Error("the NACK series went while the node was still connected")
	}
	cancel()
	conn.Close()
	waitFor(t, "the NACK series of a node gone", func() bool {
		return !strings.Contains(metricsText(t, s.Server), `node_id="tproxy-ipv4"`)
	})

	long := sotwclient.NewADSClient(testCtx(t), &corev3.Node{Id: strings.Repeat("n", xds.MaxNodeID+1)}, resourcev3.ListenerType)
	if err := long.InitConnect(dial(t, s.addr, nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := long.Fetch(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "longer than 1024") {
		t.Errorf("a node id of %d bytes: %v, want InvalidArgument saying it is too long", xds.MaxNodeID+1, err)
	}
}

// TestReadyzFollowsSourceReady: while the source says its mesh may be stale,
// /readyz is 503 with its reason (also after a mesh was applied), /debug/nodes
// says so and detour_source_ready is 0; once it is fine again, ready.
func TestReadyzFollowsSourceReady(t *testing.T) {
	t.Parallel()
	var stale atomic.Pointer[error]
	set := func(err error) { stale.Store(&err) }
	set(errors.New("endpointslices: watch refused: forbidden"))
	s := startServer(t, xds.Options{SourceReady: func() error { return *stale.Load() }})
	h := s.Handler()
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	const want = "source not ready: endpointslices: watch refused: forbidden"
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, want) {
		t.Errorf("stale source, no mesh: /readyz %d %q, want 503 %q", code, body, want)
	}
	s.update(t, loadMesh(t, "testdata/matrix.yaml"))
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, want) {
		t.Errorf("stale source, mesh applied: /readyz %d %q, want 503 %q", code, body, want)
	}
	if _, body := get("/debug/nodes"); !strings.Contains(body, `"ready": false`) || !strings.Contains(body, `"notReady": "`+want+`"`) {
		t.Errorf("/debug/nodes does not say why it is not ready:\n%.400s", body)
	}
	if _, body := get("/metrics"); !strings.Contains(body, "\ndetour_source_ready 0\n") {
		t.Error("/metrics: no detour_source_ready 0 while the source is stale")
	}
	set(nil)
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("source fine again: /readyz %d %q, want 200", code, body)
	}
	if _, body := get("/debug/nodes"); !strings.Contains(body, `"ready": true`) || strings.Contains(body, "notReady") {
		t.Errorf("/debug/nodes once ready:\n%.400s", body)
	}
	if _, body := get("/metrics"); !strings.Contains(body, "\ndetour_source_ready 1\n") {
		t.Error("/metrics: no detour_source_ready 1 once the source is fine")
	}
}
