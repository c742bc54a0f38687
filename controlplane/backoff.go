package controlplane

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
)

// servingCache wraps go-control-plane's snapshot cache (ADS mode) for the SotW
// streams. The snapshot cache keeps deciding what to send and when — versions,
// watches, ADS ordering — and two things are added around it:
//
//   - NACK back-off. go-control-plane answers a SotW NACK (which carries the
//     last ACKed version) by sending the current snapshot again straight away;
//     a proxy that rejects it NACKs again, in a loop. Here a NACK of the
//     version still current holds the watch for the back-off, then serves it
//     once more; a new snapshot for the node ends the hold at once. Delta
//     streams need no help: the server records what it sent and does not
//     resend it.
//
//   - Pre-encoded responses. The cache's responses marshal every resource
//     again for every proxy; ours hold each distinct resource's encoding
//     already (see marshalled in snapshot.go). Each SotW watch gets a channel
//     of its own; whatever the cache answers on it — always synchronously,
//     inside CreateWatch or SetSnapshot — is turned into a response that
//     reuses those bytes and forwarded to the stream's channel, in the order
//     the cache answered.
type servingCache struct {
	cachev3.SnapshotCache
	log     *slog.Logger
	backoff time.Duration
	// nacked returns the version the node last NACKed for a type URL.
	nacked func(nodeID, typeURL string) string
	// onBackoff counts a held watch.
	onBackoff func(typeURL string)

	mu      sync.Mutex
	held    map[string]map[*heldWatch]bool // node id → watches held back after a NACK
	waiting map[string]map[*sotwWatch]bool // node id → open watches the cache may answer
}

// sotwWatch is one open SotW watch: the cache answers on mid, the stream reads
// out.
type sotwWatch struct {
	typeURL string
	mid     chan cachev3.Response
	out     chan cachev3.Response
}

type heldWatch struct {
	req     *cachev3.Request
	sub     cachev3.Subscription
	ch      chan cachev3.Response
	version string // the NACKed version being held back
	timer   *time.Timer

	mu        sync.Mutex
	done      bool   // released or cancelled
	cancelled bool   // cancelled by the server
	cancel    func() // the watch's cancel, once released
}

func newServingCache(inner cachev3.SnapshotCache, log *slog.Logger, backoff time.Duration, nacked func(string, string) string, onBackoff func(string)) *servingCache {
	return &servingCache{
		SnapshotCache: inner,
		log:           log,
		backoff:       backoff,
		nacked:        nacked,
		onBackoff:     onBackoff,
		held:          make(map[string]map[*heldWatch]bool),
		waiting:       make(map[string]map[*sotwWatch]bool),
	}
}

// CreateWatch opens a SotW watch, held back when it follows a NACK of the
// current version.
func (c *servingCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	node := req.GetNode().GetId()
	if req.GetErrorDetail() != nil {
		if snap, err := c.GetSnapshot(node); err == nil {
			current := snap.GetVersion(req.GetTypeUrl())
			if current != "" && current == c.nacked(node, req.GetTypeUrl()) {
				return c.hold(node, current, req, sub, ch), nil
			}
		}
		// A newer config than the rejected one is ready: send it now.
	}
	return c.watch(node, req, sub, ch)
}

// watch opens a watch on the snapshot cache through a channel of its own.
func (c *servingCache) watch(node string, req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	w := &sotwWatch{typeURL: req.GetTypeUrl(), mid: make(chan cachev3.Response, 1), out: out}
	cancel, err := c.SnapshotCache.CreateWatch(req, sub, w.mid)
	if err != nil {
		return nil, err
	}
	select {
	case r := <-w.mid: // answered at once
		out <- c.encode(node, r)
		return cancel, nil
	default:
	}
	c.mu.Lock()
	if c.waiting[node] == nil {
		c.waiting[node] = make(map[*sotwWatch]bool)
	}
	c.waiting[node][w] = true
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.waiting[node], w)
		if len(c.waiting[node]) == 0 {
			delete(c.waiting, node)
		}
		c.mu.Unlock()
		if cancel != nil {
			cancel()
		}
	}, nil
}

// SetSnapshot sets the node's snapshot, forwards what the cache answered to
// the node's open watches, and releases held watches whose type now has a
// version other than the one NACKed.
func (c *servingCache) SetSnapshot(ctx context.Context, node string, snap cachev3.ResourceSnapshot) error {
	if err := c.SnapshotCache.SetSnapshot(ctx, node, snap); err != nil {
		return err
	}
	c.mu.Lock()
	var answered []*sotwWatch
	var r []cachev3.Response
	for w := range c.waiting[node] {
		select {
		case resp := <-w.mid:
			answered = append(answered, w)
			r = append(r, resp)
			delete(c.waiting[node], w)
		default:
		}
	}
	if len(c.waiting[node]) == 0 {
		delete(c.waiting, node)
	}
	var release []*heldWatch
	for w := range c.held[node] {
		if snap.GetVersion(w.req.GetTypeUrl()) != w.version {
			release = append(release, w)
		}
	}
	c.mu.Unlock()
	// ADS order: clusters before listeners, as the cache answered them.
	idx := make([]int, len(answered))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		return cmp.Compare(cachev3.GetResponseType(answered[a].typeURL), cachev3.GetResponseType(answered[b].typeURL))
	})
	for _, i := range idx {
		answered[i].out <- c.encode(node, r[i])
	}
	for _, w := range release {
		w.timer.Stop()
		c.release(node, w)
	}
	return nil
}

// encode turns the cache's response into one that carries the resources'
// encodings as they are. It falls back to the cache's own response when the
// snapshot moved on in between (the versions disagree).
func (c *servingCache) encode(node string, r cachev3.Response) cachev3.Response {
	raw, ok := r.(*cachev3.RawResponse)
	if !ok || raw.Heartbeat {
		return r
	}
	typeURL := raw.GetRequest().GetTypeUrl()
	snap, err := c.GetSnapshot(node)
	if err != nil || snap.GetVersion(typeURL) != raw.Version {
		return r
	}
	items := snap.GetResourcesAndTTL(typeURL)
	returned := raw.GetReturnedResources()
	names := make([]string, 0, len(returned))
	for name := range returned {
		names = append(names, name)
	}
	slices.Sort(names)
	resources := make([]*anypb.Any, 0, len(names))
	for _, name := range names {
		served, ok := items[name].Resource.(*emptypb.Empty)
		if !ok || items[name].TTL != nil {
			return r
		}
		resources = append(resources, &anypb.Any{TypeUrl: typeURL, Value: served.ProtoReflect().GetUnknown()})
	}
	return &cachev3.PassthroughResponse{
		Request: raw.GetRequest(),
		DiscoveryResponse: &discoveryv3.DiscoveryResponse{
			VersionInfo: raw.Version,
			Resources:   resources,
			TypeUrl:     typeURL,
		},
		ReturnedResources: returned,
	}
}

// hold parks a watch that follows a NACK of version for the back-off.
func (c *servingCache) hold(node, version string, req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) func() {
	w := &heldWatch{req: req, sub: sub, ch: ch, version: version}
	c.mu.Lock()
	if c.held[node] == nil {
		c.held[node] = make(map[*heldWatch]bool)
	}
	c.held[node][w] = true
	w.timer = time.AfterFunc(c.backoff, func() { c.release(node, w) })
	c.mu.Unlock()
	c.onBackoff(req.GetTypeUrl())
	c.log.Info("holding back NACKed config", "node_id", node, "type", typeLabel(req.GetTypeUrl()), "version", version, "backoff", c.backoff)
	return func() { c.cancelHeld(node, w) }
}

// release turns a held watch into an open one: the cache answers it with the
// node's current snapshot.
func (c *servingCache) release(node string, w *heldWatch) {
	c.mu.Lock()
	delete(c.held[node], w)
	if len(c.held[node]) == 0 {
		delete(c.held, node)
	}
	c.mu.Unlock()

	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		return
	}
	w.done = true
	w.mu.Unlock()
	// Not under w.mu: the watch may send on ch, which the stream goroutine
	// drains, and that goroutine may be waiting in cancelHeld.
	cancel, err := c.watch(node, w.req, w.sub, w.ch)
	if err != nil {
		c.log.Error("release held watch", "node_id", node, "error", err)
		return
	}
	w.mu.Lock()
	if w.cancelled {
		w.mu.Unlock()
		cancel()
		return
	}
	w.cancel = cancel
	w.mu.Unlock()
}

func (c *servingCache) cancelHeld(node string, w *heldWatch) {
	w.timer.Stop()
	c.mu.Lock()
	delete(c.held[node], w)
	if len(c.held[node]) == 0 {
		delete(c.held, node)
	}
	c.mu.Unlock()
	w.mu.Lock()
	w.cancelled, w.done = true, true
	cancel := w.cancel
	w.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}
