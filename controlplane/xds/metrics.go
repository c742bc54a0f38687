package xds

import (
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the control plane's Prometheus series, all named detour_…; each
// Server registers them in its own registry (no global state).
type metrics struct {
	registry *prometheus.Registry

	connected     *prometheus.GaugeVec     // protocol
	pushes        *prometheus.CounterVec   // type
	nacks         *prometheus.CounterVec   // node_id, type
	backoffs      *prometheus.CounterVec   // type
	rejected      prometheus.Counter       // identity
	buildSeconds  prometheus.Histogram     //
	ackLatency    *prometheus.HistogramVec // type
	updates       *prometheus.CounterVec   // result
	snapshotNodes prometheus.Gauge
	excluded      prometheus.Gauge
}

func newMetrics() *metrics {
	r := prometheus.NewRegistry()
	m := &metrics{
		registry: r,
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "detour_xds_connected_proxies",
			Help: "ADS streams whose proxy has identified itself, by protocol (sotw or delta).",
		}, []string{"protocol"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_xds_pushes_total",
			Help: "xDS responses queued for proxies, by resource type (a SotW response replaced by a newer one before any of it is written counts, unsent).",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_xds_nacks_total",
			Help: "Configurations a proxy rejected (NACK), by node id and resource type.",
		}, []string{"node_id", "type"}),
		backoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_xds_nack_backoffs_total",
			Help: "NACKed configurations held back instead of being resent at once, by resource type.",
		}, []string{"type"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "detour_xds_identity_rejections_total",
			Help: "ADS requests refused because the client certificate does not name the requested node id.",
		}),
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "detour_snapshot_build_seconds",
			Help:    "Time to generate, validate and version every node's snapshot for one mesh.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		ackLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "detour_config_ack_latency_seconds",
			Help:    "Time from a config change until a proxy ACKed the resulting version, by resource type.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"type"}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_config_updates_total",
			Help: "Mesh config changes by result: applied, unchanged or rejected (invalid, previous config kept).",
		}, []string{"result"}),
		snapshotNodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_snapshot_nodes",
			Help: "Nodes that have a snapshot to be served.",
		}),
		excluded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_workloads_excluded",
			Help: "Workloads the source left out of the served mesh because they cannot be served (listed in /debug/nodes).",
		}),
	}
	r.MustRegister(m.connected, m.pushes, m.nacks, m.backoffs, m.rejected, m.buildSeconds, m.ackLatency, m.updates, m.snapshotNodes, m.excluded,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, p := range []string{protocolSotW, protocolDelta} {
		m.connected.WithLabelValues(p)
	}
	for _, r := range []string{resultApplied, resultUnchanged, resultRejected} {
		m.updates.WithLabelValues(r)
	}
	// The served types' series exist (at zero) from the start, so a query or
	// an alert on them has data before the first push or NACK. nacks is by
	// node id too: its series come with the nodes.
	for _, t := range []string{typeLabel(resourcev3.ListenerType), typeLabel(resourcev3.ClusterType)} {
		m.pushes.WithLabelValues(t)
		m.backoffs.WithLabelValues(t)
		m.ackLatency.WithLabelValues(t)
	}
	return m
}

const (
	protocolSotW  = "sotw"
	protocolDelta = "delta"

	resultApplied   = "applied"
	resultUnchanged = "unchanged"
	resultRejected  = "rejected"
)
