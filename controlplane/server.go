package controlplane

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// DefaultNACKBackoff is how long a NACKed configuration is held back before it
// is sent again (unless a newer one is ready first).
const DefaultNACKBackoff = 5 * time.Second

// ServerOptions configure a Server. The zero value serves plain-text ADS with
// the defaults.
type ServerOptions struct {
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// NACKBackoff is how long a NACKed configuration is held back; 0 means
	// DefaultNACKBackoff.
	NACKBackoff time.Duration
	// TLS, when set, serves ADS over TLS. When it verifies client certificates
	// (ClientAuth RequireAndVerifyClientCert), every request's node id must be a
	// SAN of the client's certificate: a node never receives another node's
	// config.
	TLS *tls.Config
}

// Server serves Envoy proxies their listeners and clusters over ADS (SotW,
// ordered, and delta on the same gRPC service), from the latest valid Mesh
// given to Update. It also serves /healthz, /readyz, /metrics and /debug/nodes
// over HTTP (Handler). A Server is safe for concurrent use.
type Server struct {
	log     *slog.Logger
	metrics *metrics
	tracker *tracker
	cache   *servingCache
	xds     serverv3.Server
	grpc    *grpc.Server
	health  *health.Server
	ctx     context.Context
	stop    context.CancelFunc

	updateMu sync.Mutex // serialises Update and Invalid
	mu       sync.Mutex // guards current, orphans
	current  *build
	orphans  map[string]bool // removed from the mesh, snapshot kept while connected
	ready    atomic.Bool
	lastErr  atomic.Pointer[string]
	excluded atomic.Pointer[[]Excluded] // of the served mesh
}

// NewServer returns a Server with no configuration yet: proxies that connect
// wait until the first Update.
func NewServer(opts ServerOptions) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	backoff := opts.NACKBackoff
	if backoff <= 0 {
		backoff = DefaultNACKBackoff
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{
		log:     log,
		metrics: newMetrics(),
		ctx:     ctx,
		stop:    stop,
		orphans: make(map[string]bool),
	}
	s.tracker = newTracker(log, s.metrics)
	s.tracker.requireIdentity = opts.TLS != nil && opts.TLS.ClientAuth == tls.RequireAndVerifyClientCert
	s.tracker.onIdle = s.nodeIdle
	s.cache = newServingCache(log, backoff, s.tracker.nackedVersion, func(typeURL string) {
		s.metrics.backoffs.WithLabelValues(typeLabel(typeURL)).Inc()
	})
	s.xds = serverv3.NewServer(ctx, s.cache, s.tracker, sotw.WithOrderedADS())

	gopts := []grpc.ServerOption{
		// Envoy keeps one long-lived stream; many proxies share one server.
		grpc.MaxConcurrentStreams(1 << 20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// A thousand idle proxies must not each pin a 32 KiB write buffer.
		grpc.SharedWriteBuffer(true),
		// Proxies send small requests (ACKs): a 4 KiB read buffer, borrowed
		// from a pool while a connection has data to read, holds several.
		grpc.ReadBufferSize(xdsReadBufferSize),
		experimental.BufferPool(xdsBufferPool),
		grpc.ForceServerCodecV2(newXDSCodec()),
	}
	if opts.TLS != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(opts.TLS)))
	}
	s.grpc = grpc.NewServer(gopts...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.grpc, s.xds)
	s.health = health.NewServer()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	s.health.SetServingStatus(adsService, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	return s
}

// xdsReadBufferSize is the read buffer of an ADS connection (gRPC's default
// is 32 KiB). gRPC pools read buffers by size: with 10,000 proxies ACKing a
// change at once, the pool held 45 MiB of 32 KiB buffers.
const xdsReadBufferSize = 4 << 10

const adsService = "envoy.service.discovery.v3.AggregatedDiscoveryService"

// UpdateResult says what an Update changed.
type UpdateResult struct {
	// Pushed are the node ids whose snapshot changed, sorted.
	Pushed []string
	// Removed are the node ids no longer in the mesh, sorted.
	Removed []string
	// Unchanged counts the nodes whose resources are identical.
	Unchanged int
	// Build is the time taken to generate, validate and version every snapshot.
	Build time.Duration
}

// Update makes m the served mesh. m is validated, every node's resources are
// generated and validated deeply, and only when all of them pass are the
// snapshots of the nodes whose versions changed replaced. Otherwise the error
// is returned (it matches redirect.ErrInvalid or ErrInvalidResources), counted
// as a rejected update, and the previous mesh keeps being served.
func (s *Server) Update(ctx context.Context, m *Mesh) (UpdateResult, error) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	changedAt := time.Now()
	b, err := buildSnapshots(m)
	if err != nil {
		s.reject(err)
		return UpdateResult{}, err
	}
	s.metrics.buildSeconds.Observe(b.duration.Seconds())

	s.mu.Lock()
	prev := s.current
	s.mu.Unlock()
	res := UpdateResult{Build: b.duration}
	ids := make([]string, 0, len(b.nodes))
	for id := range b.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		ns := b.nodes[id]
		if prev != nil {
			if old, ok := prev.nodes[id]; ok && old.versions == ns.versions {
				res.Unchanged++
				continue
			}
		}
		s.tracker.served(id, ns.versions, changedAt)
		if err := s.cache.SetSnapshot(ctx, id, ns.snapshot); err != nil {
			// Only a cancelled ctx fails here; the nodes set so far keep theirs.
			return res, fmt.Errorf("set snapshot of node %q: %w", id, err)
		}
		res.Pushed = append(res.Pushed, id)
	}
	if prev != nil {
		for id := range prev.nodes {
			if _, ok := b.nodes[id]; !ok {
				res.Removed = append(res.Removed, id)
			}
		}
		slices.Sort(res.Removed)
	}
	s.mu.Lock()
	s.current = b
	for _, id := range res.Pushed {
		delete(s.orphans, id)
	}
	for _, id := range res.Removed {
		if s.tracker.removed(id) {
			// Its proxy is still connected: keep serving what it has until it
			// goes away (clearing would leave its watch unanswered for ever).
			s.orphans[id] = true
		} else {
			s.cache.ClearSnapshot(id)
		}
	}
	s.metrics.snapshotNodes.Set(float64(len(b.nodes) + len(s.orphans)))
	s.mu.Unlock()

	result := resultApplied
	if len(res.Pushed) == 0 && len(res.Removed) == 0 {
		result = resultUnchanged
	}
	s.metrics.updates.WithLabelValues(result).Inc()
	s.lastErr.Store(nil)
	excluded := slices.Clone(m.Excluded)
	s.excluded.Store(&excluded)
	s.metrics.excluded.Set(float64(len(excluded)))
	if !s.ready.Swap(true) {
		s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		s.health.SetServingStatus(adsService, healthpb.HealthCheckResponse_SERVING)
	}
	s.log.Info("mesh applied", "workloads", len(m.Workloads), "services", len(m.Services),
		"pushed", len(res.Pushed), "removed", len(res.Removed), "unchanged", res.Unchanged, "build", b.duration)
	return res, nil
}

// Invalid records a mesh change that could not be read or decoded: it is
// logged and counted, and the previous mesh keeps being served.
func (s *Server) Invalid(err error) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	s.reject(err)
}

// maxErrorText bounds a rejected change's error as /debug/nodes and the log
// show it. Sources already report only the first errors (MaxReportedErrors);
// this is the last line of defence against one huge error.
const maxErrorText = 64 << 10

func (s *Server) reject(err error) {
	s.metrics.updates.WithLabelValues(resultRejected).Inc()
	msg := err.Error()
	if len(msg) > maxErrorText {
		msg = strings.ToValidUTF8(msg[:maxErrorText], "") + fmt.Sprintf(" … (%d more bytes)", len(msg)-maxErrorText)
	}
	s.lastErr.Store(&msg)
	s.log.Error("mesh change rejected; previous config kept", "error", msg)
}

// nodeIdle clears the snapshot of a removed node once its last stream closed.
func (s *Server) nodeIdle(nodeID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.orphans[nodeID] {
		delete(s.orphans, nodeID)
		s.cache.ClearSnapshot(nodeID)
		n := 0
		if s.current != nil {
			n = len(s.current.nodes)
		}
		s.metrics.snapshotNodes.Set(float64(n + len(s.orphans)))
	}
}

// Versions returns the versions served to nodeID.
func (s *Server) Versions(nodeID string) (Versions, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current == nil {
		return Versions{}, false
	}
	ns, ok := s.current.nodes[nodeID]
	if !ok {
		return Versions{}, false
	}
	return ns.versions, true
}

// Ready reports whether a mesh has been applied.
func (s *Server) Ready() bool { return s.ready.Load() }

// ServeXDS serves ADS and the gRPC health service on l until Stop.
func (s *Server) ServeXDS(l net.Listener) error {
	if err := s.grpc.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve xds: %w", err)
	}
	return nil
}

// Stop ends every stream and stops serving, waiting at most grace for streams
// to finish.
func (s *Server) Stop(grace time.Duration) {
	s.health.Shutdown()
	s.stop()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		s.grpc.Stop()
		<-done
	}
}

// Handler serves the HTTP endpoints: /healthz (the process is up), /readyz (a
// mesh has been applied), /metrics (Prometheus) and /debug/nodes (JSON: each
// node's served, sent and ACKed versions and NACKs).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Ready() {
			http.Error(w, "no mesh applied yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/nodes", func(w http.ResponseWriter, _ *http.Request) {
		out := struct {
			Ready     bool         `json:"ready"`
			LastError *string      `json:"lastError,omitempty"`
			Nodes     []NodeStatus `json:"nodes"`
			Excluded  []Excluded   `json:"excluded,omitempty"`
		}{Ready: s.Ready(), LastError: s.lastErr.Load(), Nodes: s.tracker.status()}
		if e := s.excluded.Load(); e != nil {
			out.Excluded = *e
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	})
	return mux
}
