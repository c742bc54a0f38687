package xds

import (
	"context"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// listenerClusterOf is a snapshot of one listener of about lsize bytes and
// one cluster of about size bytes; tag makes their versions differ.
func listenerClusterOf(t *testing.T, lsize, size int, tag string) *Snapshot {
	t.Helper()
	l, err := proto.Marshal(&listenerv3.Listener{Name: "l" + tag + strings.Repeat("x", lsize)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := proto.Marshal(&clusterv3.Cluster{Name: "c" + tag + strings.Repeat("y", size)})
	if err != nil {
		t.Fatal(err)
	}
	var sb SnapshotBuilder
	s, err := sb.Snapshot([]*Resource{NewResource("l", resourcev3.ListenerType, l)}, []*Resource{NewResource("c", resourcev3.ClusterType, c)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// connCounts is the connections' unwritten response bytes and the part of
// them the 16 MiB cap counts.
func connCounts(srv *Server) (unsent, capped, conns int) {
	srv.transport.mu.Lock()
	defer srv.transport.mu.Unlock()
	for c := range srv.transport.conns {
		c.wmu.Lock()
		unsent += c.w.unsent
		capped += c.w.capped
		c.wmu.Unlock()
		conns++
	}
	return unsent, capped, conns
}

// TestTransportLargeResponsesUnread: a proxy that reads (gRPC's 64 KiB
// windows) but starts reading 150 ms after it asks (Envoy's main thread
// busy, or a slow link) is sent its CDS and LDS responses, streams × 2 of
// size bytes, more than 16 MiB in all. Each is the first of its type on
// its stream, which a proxy may leave unread: the proxy gets them all and
// keeps its connection (a closed one would reconnect into the same).
func TestTransportLargeResponsesUnread(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		streams, size, lsize int
		pause                time.Duration
	}{{"one stream, 9 MiB each", 1, 9 << 20, 9 << 20, 150 * time.Millisecond},
		{"three streams, 3 MiB each", 3, 3 << 20, 3 << 20, 150 * time.Millisecond},
		{"17 MiB of clusters, 1 KiB of listeners, read at once", 1, 17 << 20, 1 << 10, 0},
		{"17 MiB of clusters, 1 KiB of listeners, read after 150 ms", 1, 17 << 20, 1 << 10, 150 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := NewServer(Options{})
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			v1 := listenerClusterOf(t, tc.lsize, tc.size, "1")
			if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": v1}}); err != nil {
				t.Fatal(err)
			}
			cc := dial(t, tcpServe(t, srv), grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10),
				grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
			var sts []discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
			for range tc.streams {
				sts = append(sts, openSotW(ctx, t, discoveryv3.NewAggregatedDiscoveryServiceClient(cc), sotwBoth()...))
			}
			time.Sleep(tc.pause) // busy: not reading yet
			for i, st := range sts {
				got := map[string]bool{}
				for range 2 {
					r, err := st.Recv()
					if err != nil {
						t.Fatalf("stream %d of a proxy sent %d x 2 responses of %d MiB, reading after %v: %v", i, tc.streams, tc.size>>20, tc.pause, err)
					}
					got[r.GetTypeUrl()] = true
				}
				if !got[resourcev3.ClusterType] || !got[resourcev3.ListenerType] {
					t.Errorf("stream %d got %v, want clusters and listeners", i, got)
				}
			}
		})
	}
}

// TestTransportUnsentExact: after many updates that replace queued
// responses of a slow-reading proxy, once it has read everything, the
// connection counts no unwritten response bytes, neither in all nor
// against the cap (a drift would close a healthy proxy after enough
// changes).
func TestTransportUnsentExact(t *testing.T) {
	srv := NewServer(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	snaps := make([]*Snapshot, 40)
	for i := range snaps {
		snaps[i] = listenerClusterOf(t, 300<<10, 300<<10, strings.Repeat("v", i+1))
	}
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": snaps[0]}}); err != nil {
		t.Fatal(err)
	}
	cc := dial(t, tcpServe(t, srv), grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	st := openSotW(ctx, t, discoveryv3.NewAggregatedDiscoveryServiceClient(cc), sotwBoth()...)
	done := make(chan error, 1)
	last := snaps[len(snaps)-1].Versions()
	go func() {
		got := map[string]string{}
		for got[resourcev3.ClusterType] != last.Clusters || got[resourcev3.ListenerType] != last.Listeners {
			r, err := st.Recv()
			if err != nil {
				done <- err
				return
			}
			time.Sleep(5 * time.Millisecond) // slow
			got[r.GetTypeUrl()] = r.GetVersionInfo()
			if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for _, s := range snaps[1:] {
		if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": s}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if unsent, capped, conns := connCounts(srv); conns != 1 || unsent != 0 || capped != 0 {
		t.Errorf("connection idle, everything read: %d connections, %d bytes unsent, %d counted against the cap; want 1, 0, 0", conns, unsent, capped)
	}
}

// deltaWait sends req on a delta stream and waits until the server has
// queued its response (the tracker's last nonce of clusters for node n
// changes from prev); false when none came within 5 s.
func deltaWait(t *testing.T, srv *Server, st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, req *discoveryv3.DeltaDiscoveryRequest, prev string) (string, bool) {
	t.Helper()
	if err := st.Send(req); err != nil {
		return prev, false
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if n := lastNonce(srv, "n", resourcev3.ClusterType); n != prev {
			return n, true
		}
	}
	return prev, false
}

// TestTransportDeltaNeverReplaced: a delta proxy that does not read while it
// subscribes to a 260 KiB cluster and the cluster then changes gets, once it
// reads, both responses in order: the first version, then the second (a
// delta response replaced by the next would lose whatever only it carries).
func TestTransportDeltaNeverReplaced(t *testing.T) {
	srv := NewServer(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	v1, want1 := bigSnapshotOf(t, 10000)
	v2, want2 := bigSnapshotOf(t, 9999)
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": v1}}); err != nil {
		t.Fatal(err)
	}
	cc := dial(t, tcpServe(t, srv), grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nonce, ok := deltaWait(t, srv, st, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{"big"}}, "")
	if !ok {
		t.Fatal("no response to the subscription")
	}
	// It acknowledges the nonce (the tracker's) unread: the server then
	// sends the change.
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: nonce}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": v2}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); lastNonce(srv, "n", resourcev3.ClusterType) == nonce; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no response to the cluster's change")
		}
	}
	r1, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	r2, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range []struct {
		r    *discoveryv3.DeltaDiscoveryResponse
		want string
	}{{r1, want1}, {r2, want2}} {
		if rs := c.r.GetResources(); len(rs) != 1 || string(rs[0].GetResource().GetValue()) != c.want {
			t.Errorf("response %d: %d resources, not the cluster's version %d", i+1, len(rs), i+1)
		}
	}
}

// TestTransportUnreadResponsesBounded: a delta proxy that never reads but
// unsubscribes from a 260 KiB cluster and subscribes again, again and again
// (each subscription is answered with the cluster; delta responses are
// never replaced), has its connection closed once more than
// 16 MiB beyond the first response wait unwritten.
func TestTransportUnreadResponsesBounded(t *testing.T) {
	srv := NewServer(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	v1, want := bigSnapshotOf(t, 10000)
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": v1}}); err != nil {
		t.Fatal(err)
	}
	cc := dial(t, tcpServe(t, srv, smallSendBuffers), grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nonce, peak, conns := "", 0, 1
	for i := 0; i < 100 && conns > 0; i++ {
		if i > 0 {
			if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNamesUnsubscribe: []string{"big"}}); err != nil {
				break
			}
		}
		req := &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{"big"}}
		var ok bool
		if nonce, ok = deltaWait(t, srv, st, req, nonce); !ok {
			break
		}
		var unsent int
		unsent, _, conns = connCounts(srv)
		peak = max(peak, unsent)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && conns > 0; time.Sleep(5 * time.Millisecond) {
		_, _, conns = connCounts(srv)
	}
	t.Logf("the server held at most %d KiB unwritten", peak>>10)
	if peak > maxUnsent+2*len(want)+64<<10 {
		t.Errorf("the server held %d KiB unwritten, want at most %d KiB and two responses", peak>>10, maxUnsent>>10)
	}
	if conns > 0 {
		t.Error("the connection is still open with 26 MiB of delta responses unread")
	}
}
