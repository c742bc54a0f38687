package xds

import (
	"cmp"
	"crypto/x509"
	"log/slog"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-mesh/detour/internal/excerpt"
)

// tracker follows every ADS stream and every node: what was served, sent,
// ACKed and NACKed. The ADS server (ads.go) tells it of every stream opened
// and closed, every request (before the request opens a watch: the mTLS node
// identity is enforced here) and every response (before it is sent).
type tracker struct {
	log     *slog.Logger
	metrics *metrics
	now     func() time.Time
	// requireIdentity refuses a request whose node id is not a SAN of the
	// verified client certificate.
	requireIdentity bool
	// onIdle is called (without the lock) when the last stream of a node closes.
	onIdle func(nodeID string)

	mu      sync.Mutex
	streams map[streamKey]*streamState
	nodes   map[string]*nodeState
}

// streamKey identifies a stream (the ADS server numbers SotW and delta
// streams together; the protocol is kept for the metrics' labels).
type streamKey struct {
	protocol string
	id       int64
}

type streamState struct {
	protocol string
	node     string // empty until the first request names it
	peer     string
	sans     []string // SANs of the verified client certificate
	opened   time.Time
	// the last response sent of each type (a stream has one or two types:
	// a slice costs a tenth of two maps per proxy)
	last []sentResponse
}

type sentResponse struct{ typeURL, nonce, version string }

// lastSent returns the last response of typeURL sent on the stream.
func (s *streamState) lastSent(typeURL string) *sentResponse {
	for i := range s.last {
		if s.last[i].typeURL == typeURL {
			return &s.last[i]
		}
	}
	return nil
}

// nodeState is one node. A node has one stream and two types, nearly
// always: slices cost a fraction of maps (two maps were about 0.5 KiB per
// proxy, 5 MiB at 10,000).
type nodeState struct {
	inMesh  bool
	streams []streamKey
	types   []*typeState
}

type typeState struct {
	url       string
	served    string    // version in the snapshot cache
	changedAt time.Time // when the config change that produced served was seen
	measured  bool      // the ACK latency of served was observed
	sent      string
	sentAt    time.Time
	acked     string
	ackedAt   time.Time
	nacks     int
	nacked    string // last version NACKed
	lastNack  string
	nackedAt  time.Time
}

func newTracker(log *slog.Logger, m *metrics) *tracker {
	return &tracker{
		log:     log,
		metrics: m,
		now:     time.Now,
		streams: make(map[streamKey]*streamState),
		nodes:   make(map[string]*nodeState),
	}
}

func (t *tracker) node(id string) *nodeState {
	n, ok := t.nodes[id]
	if !ok {
		n = &nodeState{}
		t.nodes[id] = n
	}
	return n
}

// typ returns the state of the type url, created when missing.
func (n *nodeState) typ(url string) *typeState {
	if s := n.lookup(url); s != nil {
		return s
	}
	s := &typeState{url: url}
	n.types = append(n.types, s)
	return s
}

// lookup returns the state of the type url, nil when there is none.
func (n *nodeState) lookup(url string) *typeState {
	for _, s := range n.types {
		if s.url == url {
			return s
		}
	}
	return nil
}

// typeLabel is the short metric label of a type URL.
func typeLabel(url string) string {
	switch url {
	case resourcev3.ListenerType:
		return "listeners"
	case resourcev3.ClusterType:
		return "clusters"
	}
	return url
}

// served records the versions set in the cache for a node, and when the change
// that led to them was seen.
func (t *tracker) served(nodeID string, v Versions, changedAt time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.node(nodeID)
	n.inMesh = true
	for url, ver := range map[string]string{resourcev3.ListenerType: v.Listeners, resourcev3.ClusterType: v.Clusters} {
		ts := n.typ(url)
		if ts.served != ver {
			ts.served, ts.changedAt, ts.measured = ver, changedAt, false
		}
	}
}

// MaxNodeID is the longest node id served, in bytes: a pod's is its name and
// namespace (at most 317), and every id is kept per stream, logged and may
// label a NACK series.
const MaxNodeID = 1024

// removed marks a node as no longer in the mesh; it reports whether the node
// still has streams (its snapshot must then stay until they close).
func (t *tracker) removed(nodeID string) (connected bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.nodes[nodeID]
	if !ok {
		return false
	}
	n.inMesh = false
	if len(n.streams) == 0 {
		t.forget(nodeID)
		return false
	}
	return true
}

// forget drops a node that is neither in the mesh nor connected, with its
// NACK series: node ids come and go with pods, and a series per node id
// ever seen would grow without end. t.mu is held.
func (t *tracker) forget(nodeID string) {
	delete(t.nodes, nodeID)
	t.metrics.nacks.DeletePartialMatch(prometheus.Labels{"node_id": nodeID})
}

// nackedVersion is the last version of typeURL the node NACKed.
func (t *tracker) nackedVersion(nodeID, typeURL string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n, ok := t.nodes[nodeID]; ok {
		if ts := n.lookup(typeURL); ts != nil {
			return ts.nacked
		}
	}
	return ""
}

func (t *tracker) open(peer string, chains [][]*x509.Certificate, protocol string, id int64) error {
	s := &streamState{
		protocol: protocol,
		opened:   t.now(),
		peer:     peer,
	}
	if len(chains) > 0 && len(chains[0]) > 0 {
		s.sans = certSANs(chains[0][0])
	}
	t.mu.Lock()
	t.streams[streamKey{protocol, id}] = s
	t.mu.Unlock()
	return nil
}

func certSANs(c *x509.Certificate) []string {
	out := slices.Clone(c.DNSNames)
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	out = append(out, c.EmailAddresses...)
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

func (t *tracker) close(protocol string, id int64) {
	key := streamKey{protocol, id}
	t.mu.Lock()
	s, ok := t.streams[key]
	delete(t.streams, key)
	idle := ""
	if ok && s.node != "" {
		t.metrics.connected.WithLabelValues(protocol).Dec()
		if n, ok := t.nodes[s.node]; ok {
			n.streams = slices.DeleteFunc(n.streams, func(k streamKey) bool { return k == key })
			if len(n.streams) == 0 {
				n.streams = nil
				idle = s.node
				if !n.inMesh {
					t.forget(s.node)
				}
			}
		}
	}
	t.mu.Unlock()
	if idle != "" && t.onIdle != nil {
		t.onIdle(idle)
	}
}

// MaxNACKDetail bounds the part of a NACK's message that is kept per node and
// type (/debug/nodes lastNack) and logged at every NACK: Envoy's message lists
// each rejected resource, and a fleet-wide rejection of a thousand listeners
// would otherwise keep and log about 150 KB per proxy, every back-off period.
const MaxNACKDetail = 1024

// nackDetail is a NACK's message cut to MaxNACKDetail bytes, with its size.
func nackDetail(s string) string { return excerpt.Of(s, MaxNACKDetail) }

// request handles a SotW or delta request: identity, ACK and NACK.
// version is the version the request reports (SotW version_info); for delta it
// is empty and the ACKed version is the one sent with the nonce.
func (t *tracker) request(protocol string, id int64, node *corev3.Node, typeURL, nonce, version, errorDetail string, isNack bool) error {
	errorDetail = nackDetail(errorDetail)
	key := streamKey{protocol, id}
	t.mu.Lock()
	s, ok := t.streams[key]
	if !ok {
		t.mu.Unlock()
		return status.Error(codes.Internal, "unknown stream")
	}
	nodeID := s.node
	if node.GetId() != "" {
		nodeID = node.GetId()
	}
	if nodeID == "" {
		t.mu.Unlock()
		return status.Error(codes.InvalidArgument, "the first request of a stream must name its node (node.id)")
	}
	if len(nodeID) > MaxNodeID {
		t.mu.Unlock()
		return status.Errorf(codes.InvalidArgument, "node id of %d bytes is longer than %d", len(nodeID), MaxNodeID)
	}
	if t.requireIdentity && !slices.Contains(s.sans, nodeID) {
		t.mu.Unlock()
		t.metrics.rejected.Inc()
		t.log.Warn("refused node id not named by the client certificate", "node_id", nodeID, "peer", s.peer, "sans", s.sans)
		return status.Errorf(codes.PermissionDenied, "client certificate does not name node %q", nodeID)
	}
	if s.node != nodeID {
		if s.node != "" {
			t.mu.Unlock()
			return status.Errorf(codes.InvalidArgument, "node id changed on the stream from %q to %q", s.node, nodeID)
		}
		s.node = nodeID
		n := t.node(nodeID)
		n.streams = append(n.streams, key)
		t.metrics.connected.WithLabelValues(protocol).Inc()
		t.log.Info("proxy connected", "node_id", nodeID, "protocol", protocol, "peer", s.peer)
	}
	last := s.lastSent(typeURL)
	if nonce == "" || last == nil || nonce != last.nonce {
		// An initial request, or one about an older response: nothing to record.
		t.mu.Unlock()
		return nil
	}
	sentVersion := last.version
	ts := t.node(nodeID).typ(typeURL)
	now := t.now()
	if isNack {
		ts.nacks++
		ts.nacked, ts.lastNack, ts.nackedAt = sentVersion, errorDetail, now
		// The proxy that NACKed runs what it last accepted, not what an
		// earlier proxy of the node (before a restart) ACKed: a SotW NACK
		// says so (version_info, "" when it accepted none); a delta proxy
		// keeps what it had, which is not the version it just rejected.
		runs := ts.acked
		switch {
		case protocol != protocolDelta:
			runs = version
		case runs == sentVersion:
			runs = ""
		}
		if runs != ts.acked {
			ts.acked, ts.ackedAt = runs, time.Time{}
		}
		t.mu.Unlock()
		t.metrics.nacks.WithLabelValues(nodeID, typeLabel(typeURL)).Inc()
		t.log.Warn("proxy rejected config (NACK)", "node_id", nodeID, "type", typeLabel(typeURL), "version", sentVersion, "error", errorDetail)
		return nil
	}
	acked := version
	if protocol == protocolDelta {
		acked = sentVersion
	}
	ts.acked, ts.ackedAt = acked, now
	var latency time.Duration
	if acked == ts.served && !ts.measured && !ts.changedAt.IsZero() {
		ts.measured = true
		latency = now.Sub(ts.changedAt)
	}
	t.mu.Unlock()
	if latency > 0 {
		t.metrics.ackLatency.WithLabelValues(typeLabel(typeURL)).Observe(latency.Seconds())
	}
	return nil
}

func (t *tracker) response(protocol string, id int64, typeURL, nonce, version string) {
	t.mu.Lock()
	if s, ok := t.streams[streamKey{protocol, id}]; ok {
		if last := s.lastSent(typeURL); last != nil {
			last.nonce, last.version = nonce, version
		} else {
			s.last = append(s.last, sentResponse{typeURL, nonce, version})
		}
		if s.node != "" {
			ts := t.node(s.node).typ(typeURL)
			ts.sent, ts.sentAt = version, t.now()
		}
	}
	t.mu.Unlock()
	t.metrics.pushes.WithLabelValues(typeLabel(typeURL)).Inc()
}

// NodeStatus is one node's entry of /debug/nodes.
type NodeStatus struct {
	NodeID    string                `json:"nodeId"`
	InMesh    bool                  `json:"inMesh"`
	Streams   []StreamStatus        `json:"streams"`
	Resources map[string]TypeStatus `json:"resources"`
}

// StreamStatus describes one connected ADS stream.
type StreamStatus struct {
	Protocol string    `json:"protocol"`
	Peer     string    `json:"peer,omitempty"`
	Opened   time.Time `json:"opened"`
}

// TypeStatus is the state of one resource type of a node: the version the
// control plane serves, the last one sent, the last one the proxy ACKed, and
// its NACKs.
type TypeStatus struct {
	Served   string     `json:"served"`
	Sent     string     `json:"sent,omitempty"`
	Acked    string     `json:"acked,omitempty"`
	AckedAt  *time.Time `json:"ackedAt,omitempty"`
	InSync   bool       `json:"inSync"`
	NACKs    int        `json:"nacks"`
	Nacked   string     `json:"nacked,omitempty"`
	LastNACK string     `json:"lastNack,omitempty"`
}

// status returns every known node, sorted by node id.
func (t *tracker) status() []NodeStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]NodeStatus, 0, len(t.nodes))
	for id, n := range t.nodes {
		ns := NodeStatus{NodeID: id, InMesh: n.inMesh, Streams: []StreamStatus{}, Resources: make(map[string]TypeStatus, len(n.types))}
		for _, key := range n.streams {
			if s, ok := t.streams[key]; ok {
				ns.Streams = append(ns.Streams, StreamStatus{Protocol: s.protocol, Peer: s.peer, Opened: s.opened})
			}
		}
		slices.SortFunc(ns.Streams, func(a, b StreamStatus) int { return a.Opened.Compare(b.Opened) })
		for _, ts := range n.types {
			st := TypeStatus{Served: ts.served, Sent: ts.sent, Acked: ts.acked, InSync: ts.served != "" && ts.acked == ts.served,
				NACKs: ts.nacks, Nacked: ts.nacked, LastNACK: ts.lastNack}
			if !ts.ackedAt.IsZero() {
				at := ts.ackedAt
				st.AckedAt = &at
			}
			ns.Resources[typeLabel(ts.url)] = st
		}
		out = append(out, ns)
	}
	slices.SortFunc(out, func(a, b NodeStatus) int { return cmp.Compare(a.NodeID, b.NodeID) })
	return out
}
