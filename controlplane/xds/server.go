package xds

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// DefaultNACKBackoff is how long a NACKed configuration is held back before it
// is sent again (unless a newer one is ready first).
const DefaultNACKBackoff = 5 * time.Second

// Options configure a Server. The zero value serves plain-text ADS with
// the defaults.
type Options struct {
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
	// SourceReady, when set, says why the configuration's source may be
	// stale: while it returns an error the server is not ready (/readyz 503
	// with the error, /debug/nodes notReady, detour_source_ready 0).
	SourceReady func() error
}

// Server serves Envoy proxies their listeners and clusters over ADS (SotW,
// ordered, and delta on the same gRPC service), from the snapshots last given
// to SetSnapshots. It also serves /healthz, /readyz, /metrics and /debug/nodes
// over HTTP (Handler). A Server is safe for concurrent use.
type Server struct {
	log       *slog.Logger
	metrics   *metrics
	tracker   *tracker
	cache     *servingCache
	transport *transport
	health    *healthServer

	updateMu sync.Mutex // serialises SetSnapshots and Reject
	mu       sync.Mutex // guards current, orphans
	current  map[string]*Snapshot
	orphans  map[string]bool // removed from the configuration, snapshot kept while connected
	ready    atomic.Bool
	lastErr  atomic.Pointer[string]
	excluded atomic.Pointer[[]Excluded] // of the served configuration

	sourceReady func() error // nil: the source is never stale
}

// NewServer returns a Server with no configuration yet: proxies that connect
// wait until the first SetSnapshots.
func NewServer(opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	backoff := opts.NACKBackoff
	if backoff <= 0 {
		backoff = DefaultNACKBackoff
	}
	s := &Server{
		log:     log,
		metrics: newMetrics(),
		orphans: make(map[string]bool),

		sourceReady: opts.SourceReady,
	}
	if s.sourceReady != nil {
		s.metrics.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "detour_source_ready",
			Help: "0 while the configuration's source is stale (a Kubernetes list or watch refused), else 1.",
		}, func() float64 {
			if s.sourceReady() != nil {
				return 0
			}
			return 1
		}))
	}
	s.tracker = newTracker(log, s.metrics)
	s.tracker.requireIdentity = opts.TLS != nil && opts.TLS.ClientAuth == tls.RequireAndVerifyClientCert
	s.tracker.onIdle = s.nodeIdle
	s.cache = newServingCache(log, backoff, s.tracker.nackedVersion, func(typeURL string) {
		s.metrics.backoffs.WithLabelValues(typeLabel(typeURL)).Inc()
	})

	fs := &flights{}
	s.health = newHealthServer()
	s.health.set("", healthpb.HealthCheckResponse_NOT_SERVING)
	s.health.set(adsService, healthpb.HealthCheckResponse_NOT_SERVING)
	methods := newADSServer(s.cache, s.tracker, fs).methods()
	maps.Copy(methods, s.health.methods())
	s.transport = newTransport(log, opts.TLS, newXDSCodec(fs), methods)
	return s
}

const adsService = "envoy.service.discovery.v3.AggregatedDiscoveryService"

// UpdateResult says what a change of the served snapshots changed.
type UpdateResult struct {
	// Pushed are the node ids whose snapshot changed, sorted.
	Pushed []string
	// Removed are the node ids no longer served, sorted.
	Removed []string
	// Unchanged counts the nodes whose resources are identical.
	Unchanged int
	// Build is the time taken to generate, validate and version every snapshot.
	Build time.Duration
}

// Snapshots is a complete configuration: what every node is served.
type Snapshots struct {
	// Nodes are the snapshots by node id (Envoy's node.id). Nodes of the same
	// shape may share one.
	Nodes map[string]*Snapshot
	// Build is how long making them took (a metric and UpdateResult.Build).
	Build time.Duration
	// ChangedAt is when the change they answer was seen; the ACK latency
	// metric is measured from it. Zero means now.
	ChangedAt time.Time
	// Excluded are nodes the configuration left out, and why:
	// detour_workloads_excluded and /debug/nodes show them.
	Excluded []Excluded
}

// Excluded is a node that is not served, and why.
type Excluded struct {
	NodeID string `json:"nodeId"`
	Reason string `json:"reason"`
}

// SetSnapshots makes next the served configuration: the snapshots of the
// nodes whose versions changed are replaced (and their open watches
// answered), nodes no longer in next are removed once their proxies are gone,
// and the server becomes ready. It fails only when ctx is cancelled.
func (s *Server) SetSnapshots(ctx context.Context, next Snapshots) (UpdateResult, error) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	changedAt := next.ChangedAt
	if changedAt.IsZero() {
		changedAt = time.Now()
	}
	s.metrics.buildSeconds.Observe(next.Build.Seconds())

	s.mu.Lock()
	prev := s.current
	s.mu.Unlock()
	res := UpdateResult{Build: next.Build}
	ids := make([]string, 0, len(next.Nodes))
	for id := range next.Nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	users := make(map[*Snapshot]int, len(next.Nodes))
	for _, snap := range next.Nodes {
		if users[snap]++; users[snap] == 2 {
			snap.markShared()
		}
	}
	for _, id := range ids {
		snap := next.Nodes[id]
		if old, ok := prev[id]; ok && old.Versions() == snap.Versions() {
			res.Unchanged++
			continue
		}
		s.tracker.served(id, snap.Versions(), changedAt)
		if err := s.cache.SetSnapshot(ctx, id, snap); err != nil {
			// Only a cancelled ctx fails here; the nodes set so far keep theirs.
			return res, fmt.Errorf("set snapshot of node %q: %w", id, err)
		}
		res.Pushed = append(res.Pushed, id)
	}
	for id := range prev {
		if _, ok := next.Nodes[id]; !ok {
			res.Removed = append(res.Removed, id)
		}
	}
	slices.Sort(res.Removed)
	s.mu.Lock()
	s.current = next.Nodes
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
	s.metrics.snapshotNodes.Set(float64(len(next.Nodes) + len(s.orphans)))
	s.mu.Unlock()

	result := resultApplied
	if len(res.Pushed) == 0 && len(res.Removed) == 0 {
		result = resultUnchanged
	}
	s.metrics.updates.WithLabelValues(result).Inc()
	s.lastErr.Store(nil)
	excluded := slices.Clone(next.Excluded)
	s.excluded.Store(&excluded)
	s.metrics.excluded.Set(float64(len(excluded)))
	if !s.ready.Swap(true) {
		s.health.set("", healthpb.HealthCheckResponse_SERVING)
		s.health.set(adsService, healthpb.HealthCheckResponse_SERVING)
	}
	return res, nil
}

// Reject records a configuration change that could not be served (it could
// not be read, or is invalid): it is logged, counted and shown on
// /debug/nodes until the next SetSnapshots, and the previous snapshots keep
// being served.
func (s *Server) Reject(err error) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	s.reject(err)
}

// maxErrorText bounds a rejected change's error as /debug/nodes and the log
// show it. The mesh sources already report only the first errors; this is
// the last line of defence against one huge error.
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
		s.metrics.snapshotNodes.Set(float64(len(s.current) + len(s.orphans)))
	}
}

// Versions returns the versions served to nodeID.
func (s *Server) Versions(nodeID string) (Versions, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap, ok := s.current[nodeID]
	if !ok {
		return Versions{}, false
	}
	return snap.Versions(), true
}

// Ready reports whether snapshots have been set.
func (s *Server) Ready() bool { return s.ready.Load() }

// NotReady returns why the server is not ready — its source may be stale
// (Options.SourceReady), or no snapshots have been set yet — or nil.
func (s *Server) NotReady() error {
	if s.sourceReady != nil {
		if err := s.sourceReady(); err != nil {
			return fmt.Errorf("source not ready: %w", err)
		}
	}
	if !s.Ready() {
		return errors.New("no mesh applied yet")
	}
	return nil
}

// ServeXDS serves ADS and the gRPC health service on l until Stop (over
// detour's own gRPC transport, h2conn.go).
func (s *Server) ServeXDS(l net.Listener) error {
	if err := s.transport.serve(l); err != nil && !errors.Is(err, errStopped) {
		return fmt.Errorf("serve xds: %w", err)
	}
	return nil
}

// Stop stops serving: it closes the listeners and every connection at once.
// ADS streams never end by themselves (and a connection's one goroutine
// waits for the proxy's next request), so there is nothing to wait for; proxies
// reconnect to another replica or to the restarted server.
func (s *Server) Stop() {
	s.health.stop()
	s.transport.shutdown()
}

// Handler serves the HTTP endpoints: /healthz (the process is up), /readyz
// (snapshots have been set and the source is not stale: NotReady), /metrics (Prometheus) and /debug/nodes (JSON: each
// node's served, sent and ACKed versions and NACKs).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.NotReady(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/nodes", func(w http.ResponseWriter, _ *http.Request) {
		out := struct {
			Ready     bool         `json:"ready"`
			NotReady  string       `json:"notReady,omitempty"`
			LastError *string      `json:"lastError,omitempty"`
			Nodes     []NodeStatus `json:"nodes"`
			Excluded  []Excluded   `json:"excluded,omitempty"`
		}{LastError: s.lastErr.Load(), Nodes: s.tracker.status()}
		if err := s.NotReady(); err != nil {
			out.NotReady = err.Error()
		} else {
			out.Ready = true
		}
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
