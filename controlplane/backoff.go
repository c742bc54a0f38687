package controlplane

import (
	"context"
	"log/slog"
	"sync"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// backoffCache wraps the snapshot cache so a NACKed configuration is not resent
// at once. go-control-plane answers a SotW NACK (which carries the last ACKed
// version) by sending the current snapshot again straight away; a proxy that
// rejects it NACKs again, in a loop that burns both sides. Here a NACK of the
// version still current holds the watch for the back-off, then serves it once
// more; a new snapshot for the node ends the hold at once. Delta streams need
// no help: the server records what it sent and does not resend it.
type backoffCache struct {
	cachev3.SnapshotCache
	log     *slog.Logger
	backoff time.Duration
	// nacked returns the version the node last NACKed for a type URL.
	nacked func(nodeID, typeURL string) string
	// onBackoff counts a held watch.
	onBackoff func(typeURL string)

	mu      sync.Mutex
	pending map[string]map[*heldWatch]bool // node id → held watches
}

type heldWatch struct {
	req     *cachev3.Request
	sub     cachev3.Subscription
	ch      chan cachev3.Response
	version string // the NACKed version being held back
	timer   *time.Timer

	mu        sync.Mutex
	done      bool   // fired or cancelled
	cancelled bool   // cancelled by the server
	cancel    func() // the inner watch's cancel, once fired
}

func newBackoffCache(inner cachev3.SnapshotCache, log *slog.Logger, backoff time.Duration, nacked func(string, string) string, onBackoff func(string)) *backoffCache {
	return &backoffCache{
		SnapshotCache: inner,
		log:           log,
		backoff:       backoff,
		nacked:        nacked,
		onBackoff:     onBackoff,
		pending:       make(map[string]map[*heldWatch]bool),
	}
}

// CreateWatch holds a SotW watch that follows a NACK of the current version.
func (b *backoffCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if req.GetErrorDetail() == nil {
		return b.SnapshotCache.CreateWatch(req, sub, ch)
	}
	node := req.GetNode().GetId()
	snap, err := b.GetSnapshot(node)
	if err != nil {
		return b.SnapshotCache.CreateWatch(req, sub, ch)
	}
	current := snap.GetVersion(req.GetTypeUrl())
	if current == "" || current != b.nacked(node, req.GetTypeUrl()) {
		// A newer config than the rejected one is ready: send it now.
		return b.SnapshotCache.CreateWatch(req, sub, ch)
	}
	w := &heldWatch{req: req, sub: sub, ch: ch, version: current}
	b.mu.Lock()
	if b.pending[node] == nil {
		b.pending[node] = make(map[*heldWatch]bool)
	}
	b.pending[node][w] = true
	w.timer = time.AfterFunc(b.backoff, func() { b.release(node, w) })
	b.mu.Unlock()
	b.onBackoff(req.GetTypeUrl())
	b.log.Info("holding back NACKed config", "node_id", node, "type", typeLabel(req.GetTypeUrl()), "version", current, "backoff", b.backoff)
	return func() { b.cancelHeld(node, w) }, nil
}

// release turns a held watch into a real one: the cache answers it with the
// node's current snapshot.
func (b *backoffCache) release(node string, w *heldWatch) {
	b.mu.Lock()
	delete(b.pending[node], w)
	if len(b.pending[node]) == 0 {
		delete(b.pending, node)
	}
	b.mu.Unlock()

	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		return
	}
	w.done = true
	w.mu.Unlock()
	// Not under w.mu: the cache may send on ch, which the stream goroutine
	// drains, and that goroutine may be waiting in cancelHeld.
	cancel, err := b.SnapshotCache.CreateWatch(w.req, w.sub, w.ch)
	if err != nil {
		b.log.Error("release held watch", "node_id", node, "error", err)
		return
	}
	w.mu.Lock()
	if w.cancelled {
		w.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		return
	}
	w.cancel = cancel
	w.mu.Unlock()
}

func (b *backoffCache) cancelHeld(node string, w *heldWatch) {
	w.timer.Stop()
	b.mu.Lock()
	delete(b.pending[node], w)
	if len(b.pending[node]) == 0 {
		delete(b.pending, node)
	}
	b.mu.Unlock()
	w.mu.Lock()
	w.cancelled, w.done = true, true
	cancel := w.cancel
	w.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// SetSnapshot sets the node's snapshot and releases its held watches whose type
// now has a different version than the one NACKed.
func (b *backoffCache) SetSnapshot(ctx context.Context, node string, snap cachev3.ResourceSnapshot) error {
	if err := b.SnapshotCache.SetSnapshot(ctx, node, snap); err != nil {
		return err
	}
	b.mu.Lock()
	var release []*heldWatch
	for w := range b.pending[node] {
		if snap.GetVersion(w.req.GetTypeUrl()) != w.version {
			release = append(release, w)
		}
	}
	b.mu.Unlock()
	for _, w := range release {
		w.timer.Stop()
		b.release(node, w)
	}
	return nil
}
