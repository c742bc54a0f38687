package xds

import (
	"sync"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// NACK back-off: a SotW watch that follows a NACK of the version still
// current is held for the back-off, then served once more; a new snapshot for
// the node (SetSnapshot) ends the hold at once.

type heldWatch struct {
	req     *cachev3.Request
	sub     cachev3.Subscription
	send    func(cachev3.Response)
	version string // the NACKed version being held back
	timer   *time.Timer

	mu        sync.Mutex
	done      bool   // released or cancelled
	cancelled bool   // cancelled by the server
	cancel    func() // the watch's cancel, once released
}

// hold parks a watch that follows a NACK of version for the back-off.
func (c *servingCache) hold(node, version string, req *cachev3.Request, sub cachev3.Subscription, send func(cachev3.Response)) func() {
	w := &heldWatch{req: req, sub: sub, send: send, version: version}
	n := c.node(node)
	if n.held == nil {
		n.held = make(map[*heldWatch]struct{})
	}
	n.held[w] = struct{}{}
	w.timer = time.AfterFunc(c.backoff, func() { c.release(node, w) })
	n.mu.Unlock()
	c.onBackoff(req.GetTypeUrl())
	c.log.Info("holding back NACKed config", "node_id", node, "type", typeLabel(req.GetTypeUrl()), "version", version, "backoff", c.backoff)
	return func() { c.cancelHeld(node, w) }
}

// release turns a held watch into an open one: the cache answers it with the
// node's current snapshot.
func (c *servingCache) release(node string, w *heldWatch) {
	c.unhold(node, w)

	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		return
	}
	w.done = true
	w.mu.Unlock()
	// Not under w.mu: cancelHeld takes the node's lock after w.mu's, so
	// the node's lock is never taken under w.mu.
	cancel := c.watch(node, w.req, w.sub, w.send)
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
	c.unhold(node, w)
	w.mu.Lock()
	w.cancelled, w.done = true, true
	cancel := w.cancel
	w.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

func (c *servingCache) unhold(node string, w *heldWatch) {
	c.mu.Lock()
	n := c.nodes[node]
	c.mu.Unlock()
	if n != nil {
		n.mu.Lock()
		delete(n.held, w)
		n.mu.Unlock()
	}
}
