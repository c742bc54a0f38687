package xds

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// servingCache is the xDS cache of the ADS server (go-control-plane's
// serverv3.Server drives the streams; this decides what to send and when). It
// keeps go-control-plane's snapshot cache semantics for ADS — a SotW watch is
// answered when the node's version of its type differs from the request's
// (or a subscribed resource was never returned), a delta watch when resources
// changed, were added or removed, responses of one node go out clusters
// before listeners — and adds two things:
//
//   - Pre-encoded responses. go-control-plane's cache wraps every resource of
//     every response in a fresh cachedResource (with two sync.OnceValues),
//     copies its snapshot's maps for every delta response and marshals every
//     resource again for each proxy: with a thousand proxies and a hundred
//     listeners that was most of a push's CPU and garbage. Here responses
//     point at the servedResource of each resource, built once per build, and
//     a snapshot is sorted slices of pointers rather than three maps.
//
//   - NACK back-off (backoff.go). go-control-plane answers a SotW NACK (which
//     carries the last ACKed version) by sending the current snapshot again
//     straight away; a proxy that rejects it NACKs again, in a loop. Here a
//     NACK of the version still current holds the watch for the back-off.
//     Delta streams need no help: the server records what it sent and does
//     not resend it.
//
// Responses are sent on the stream's channel with the node's lock held, as
// go-control-plane's cache does: the server sizes those channels so that the
// at most one pending response per type never blocks.
type servingCache struct {
	log     *slog.Logger
	backoff time.Duration
	// nacked returns the version the node last NACKed for a type URL.
	nacked func(nodeID, typeURL string) string
	// onBackoff counts a held watch.
	onBackoff func(typeURL string)

	mu    sync.Mutex
	nodes map[string]*cacheNode
}

// cacheNode is one node's snapshot and open watches.
type cacheNode struct {
	mu    sync.Mutex
	snap  *Snapshot               // nil until the first SetSnapshot
	sotw  []*sotwWatch            // open SotW watches (a stream has one per type)
	delta []*deltaWatch           // open delta watches
	held  map[*heldWatch]struct{} // SotW watches held back after a NACK
	sent  map[sentKey]*sentType   // servedTypes delta streams' maps refer to (see sentType)
	gone  bool                    // cleared; a new cacheNode replaces it
}

// A watch's send hands its response to the stream (adsStream.put): it is
// called with the node's lock held and must not block.

type sotwWatch struct {
	req  *cachev3.Request
	sub  cachev3.Subscription
	send func(cachev3.Response)
}

type deltaWatch struct {
	req  *cachev3.DeltaRequest
	sub  cachev3.Subscription
	send func(cachev3.DeltaResponse)
}

func newServingCache(log *slog.Logger, backoff time.Duration, nacked func(string, string) string, onBackoff func(string)) *servingCache {
	return &servingCache{
		log:       log,
		backoff:   backoff,
		nacked:    nacked,
		onBackoff: onBackoff,
		nodes:     make(map[string]*cacheNode),
	}
}

// node returns the entry of id, created when missing. Its lock is held on
// return; a cleared entry is never returned.
func (c *servingCache) node(id string) *cacheNode {
	for {
		c.mu.Lock()
		n, ok := c.nodes[id]
		if !ok {
			n = &cacheNode{}
			c.nodes[id] = n
		}
		c.mu.Unlock()
		n.mu.Lock()
		if !n.gone {
			return n
		}
		n.mu.Unlock()
	}
}

// errNoSnapshot is GetSnapshot's error for a node without a snapshot.
var errNoSnapshot = errors.New("no snapshot")

// GetSnapshot returns the node's snapshot.
func (c *servingCache) GetSnapshot(node string) (*Snapshot, error) {
	c.mu.Lock()
	n := c.nodes[node]
	c.mu.Unlock()
	if n != nil {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.snap != nil && !n.gone {
			return n.snap, nil
		}
	}
	return nil, fmt.Errorf("node %q: %w", node, errNoSnapshot)
}

// SetSnapshot makes snap the node's snapshot and answers the node's open
// watches it changes, clusters before listeners, and releases held watches
// whose type now has a version other than the one NACKed.
func (c *servingCache) SetSnapshot(ctx context.Context, node string, snap *Snapshot) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n := c.node(node)
	n.snap = snap
	// DeleteFunc answers them in order, clusters before listeners.
	slices.SortStableFunc(n.sotw, func(a, b *sotwWatch) int { return compareTypes(a.req.GetTypeUrl(), b.req.GetTypeUrl()) })
	n.sotw = slices.DeleteFunc(n.sotw, func(w *sotwWatch) bool { return c.respondSotW(snap, w, false) })
	slices.SortStableFunc(n.delta, func(a, b *deltaWatch) int { return compareTypes(a.req.GetTypeUrl(), b.req.GetTypeUrl()) })
	n.delta = slices.DeleteFunc(n.delta, func(w *deltaWatch) bool { return n.respondDelta(snap, w) })
	var release []*heldWatch
	for w := range n.held {
		if snap.GetVersion(w.req.GetTypeUrl()) != w.version {
			release = append(release, w)
		}
	}
	n.mu.Unlock()
	for _, w := range release {
		w.timer.Stop()
		c.release(node, w)
	}
	return nil
}

// compareTypes orders type URLs as ADS sends them (clusters before listeners).
func compareTypes(a, b string) int {
	return cmp.Compare(cachev3.GetResponseType(a), cachev3.GetResponseType(b))
}

// ClearSnapshot forgets the node: its snapshot and its watches, which are
// never answered.
func (c *servingCache) ClearSnapshot(node string) {
	c.mu.Lock()
	n := c.nodes[node]
	delete(c.nodes, node)
	c.mu.Unlock()
	if n != nil {
		n.mu.Lock()
		n.gone = true
		n.mu.Unlock()
	}
}

// CreateWatch opens a SotW watch of node, held back when it follows a NACK of
// the current version. It returns the watch's cancel.
func (c *servingCache) CreateWatch(node string, req *cachev3.Request, sub cachev3.Subscription, send func(cachev3.Response)) func() {
	if req.GetErrorDetail() != nil {
		if snap, err := c.GetSnapshot(node); err == nil {
			current := snap.GetVersion(req.GetTypeUrl())
			if current != "" && current == c.nacked(node, req.GetTypeUrl()) {
				return c.hold(node, current, req, sub, send)
			}
		}
		// A newer config than the rejected one is ready: send it now.
	}
	return c.watch(node, req, sub, send)
}

// watch answers a SotW request at once when the node's snapshot has something
// the proxy lacks, or opens a watch that SetSnapshot answers.
func (c *servingCache) watch(node string, req *cachev3.Request, sub cachev3.Subscription, send func(cachev3.Response)) func() {
	w := &sotwWatch{req: req, sub: sub, send: send}
	n := c.node(node)
	defer n.mu.Unlock()
	if n.snap != nil && c.respondSotW(n.snap, w, true) {
		return func() {}
	}
	n.sotw = append(n.sotw, w)
	return func() {
		n.mu.Lock()
		n.sotw = slices.DeleteFunc(n.sotw, func(x *sotwWatch) bool { return x == w })
		n.mu.Unlock()
	}
}

// respondSotW sends w the snapshot's resources of its type when its version
// differs from the request's or, when opening (fresh), when the proxy was
// never sent a resource it subscribes to. It reports whether it sent.
func (c *servingCache) respondSotW(snap *Snapshot, w *sotwWatch, fresh bool) bool {
	typeURL := w.req.GetTypeUrl()
	t := snap.typ(typeURL)
	if t.version == w.req.GetVersionInfo() {
		if !fresh || !missing(t, w.sub) {
			return false
		}
	}
	r := &sotwResponse{req: w.req, version: t.version, typeURL: typeURL}
	if w.sub.IsWildcard() {
		// The stream keeps this map until its next response: one entry
		// instead of one per resource (see missing), and one map for every
		// stream sent the same version.
		r.full = t
		r.returned = t.returnedMap()
	} else {
		// Only the resources asked for, in name order.
		subscribed := w.sub.SubscribedResources()
		r.returned = make(map[string]string, len(subscribed))
		for res := range t.all() {
			if _, ok := subscribed[res.name]; ok {
				r.resources = append(r.resources, res.any)
				r.returned[res.name] = t.version
			}
		}
	}
	w.send(r)
	return true
}

// sotwResponse is a SotW response of pre-encoded resources: a cachev3.Response
// that go-control-plane's types accept. The list of a full response is made
// when it is sent (GetDiscoveryResponse), so that a push to 10,000 distinct
// workloads does not hold 10,000 lists in the streams' outboxes.
type sotwResponse struct {
	req              *cachev3.Request
	version, typeURL string
	full             *servedType  // every resource of it, or
	resources        []*anypb.Any // only these
	returned         map[string]string
}

// pushResponse is GetDiscoveryResponse for a push: the list of a full
// response of a type only one node is served is borrowed (servedType.borrow)
// and must be given back (anyLists.giveBack) once the response is encoded,
// which SendMsg does before it returns (h2stream.SendMsg marshals it with
// xdsCodec and keeps only the encoding).
func (r *sotwResponse) pushResponse(lists *anyLists) (*discoveryv3.DiscoveryResponse, *[]*anypb.Any) {
	resources, borrowed := r.resources, (*[]*anypb.Any)(nil)
	if r.full != nil {
		resources, borrowed = r.full.borrow(lists)
	}
	return &discoveryv3.DiscoveryResponse{VersionInfo: r.version, Resources: resources, TypeUrl: r.typeURL}, borrowed
}

func (r *sotwResponse) GetDiscoveryResponse() (*discoveryv3.DiscoveryResponse, error) {
	resources := r.resources
	if r.full != nil {
		resources = r.full.fullResources()
	}
	return &discoveryv3.DiscoveryResponse{VersionInfo: r.version, Resources: resources, TypeUrl: r.typeURL}, nil
}

func (r *sotwResponse) GetRequest() *discoveryv3.DiscoveryRequest { return r.req }

func (r *sotwResponse) GetVersion() (string, error) { return r.version, nil }

func (r *sotwResponse) GetResponseVersion() string { return r.version }

func (r *sotwResponse) GetReturnedResources() map[string]string { return r.returned }

func (r *sotwResponse) GetContext() context.Context { return context.Background() }

var _ cachev3.Response = (*sotwResponse)(nil)

// returnedAll is the name under which a SotW stream remembers that it was
// sent every resource of a version: the whole state of that type, since
// versions are content hashes. It is no resource name (those are never empty
// nor contain NUL). go-control-plane's server hands the map back unchanged
// except that a request naming resources deletes the names it does not ask
// for, this one included: the stream then counts as knowing nothing, and it
// is sent what it asks for.
const returnedAll = "\x00all"

// missing reports whether the snapshot holds a resource the subscription
// wants and the proxy was not sent. Called only when the proxy has t's
// version.
func missing(t *servedType, sub cachev3.Subscription) bool {
	known := sub.ReturnedResources()
	if v, ok := known[returnedAll]; ok && v == t.version {
		return false
	}
	if sub.IsWildcard() {
		for r := range t.all() {
			if _, ok := known[r.name]; !ok {
				return true
			}
		}
		return false
	}
	for name := range sub.SubscribedResources() {
		if _, ok := known[name]; !ok && t.lookup(name) != nil {
			return true
		}
	}
	return false
}

// CreateDeltaWatch answers a delta request at once when the proxy's resources
// differ from the snapshot's (or it is the first wildcard request of its
// type), or opens a watch that SetSnapshot answers.
func (c *servingCache) CreateDeltaWatch(node string, req *cachev3.DeltaRequest, sub cachev3.Subscription, send func(cachev3.DeltaResponse)) func() {
	w := &deltaWatch{req: req, sub: sub, send: send}
	n := c.node(node)
	defer n.mu.Unlock()
	if n.snap != nil && n.respondDelta(n.snap, w) {
		return nil
	}
	n.delta = append(n.delta, w)
	return func() {
		n.mu.Lock()
		n.delta = slices.DeleteFunc(n.delta, func(x *deltaWatch) bool { return x == w })
		n.mu.Unlock()
	}
}

// A delta stream keeps, per type, the version of each resource it was sent
// (go-control-plane's server stores the map the cache gives it and hands it
// back with the next request). For a wildcard subscription that map would be
// a copy of the node's whole name → version table, per proxy and per change:
// with a thousand proxies, most of the control plane's memory. Instead, the
// map of a wildcard stream holds returnedAll → the version of the servedType
// it was sent (see sentType), and entries only for what differs from it — the
// server itself writes "" for a name unsubscribed while wildcard, so that it
// is sent again. The servedType stays in the node's sent table while a
// stream's map, or a response not yet sent, refers to it: the response holds
// a sentRef, which the ADS stream releases when it drops the response or
// replaces (or closes) the map the response installed. Released at once,
// not when the collector finds the map unreachable: a version replaced by a
// change is freed by the next collection, so that a change of 10,000
// distinct workloads does not keep three generations of their snapshots.

// sentType is a servedType a delta stream's map refers to.
type sentType struct {
	t    *servedType
	refs int
}

type sentKey struct{ typeURL, version string }

// known is what a delta stream has of one type: the explicit entries of its
// map over the servedType its returnedAll token names (if any).
type known struct {
	m    map[string]string
	base *servedType
}

func (k known) get(name string) (string, bool) {
	if v, ok := k.m[name]; ok {
		return v, true
	}
	if k.base != nil {
		if r := k.base.lookup(name); r != nil {
			return r.hash, true
		}
	}
	return "", false
}

// names calls f for every name the stream has.
func (k known) names(f func(string)) {
	for name := range k.m {
		if name != returnedAll {
			f(name)
		}
	}
	if k.base != nil {
		for r := range k.base.all() {
			if _, ok := k.m[r.name]; !ok {
				f(r.name)
			}
		}
	}
}

// known returns what the stream of w has. Called with n.mu held.
func (n *cacheNode) known(w *deltaWatch) known {
	m := w.sub.ReturnedResources()
	k := known{m: m}
	if token, ok := m[returnedAll]; ok {
		st := n.sent[sentKey{w.req.GetTypeUrl(), token}]
		if st == nil {
			// Cannot happen: the stream holds the entry while its map
			// is installed. Counting nothing as sent makes the stream
			// receive every resource again.
			return known{m: m}
		}
		k.base = st.t
	}
	return k
}

// sentRef is one hold of a stream's map (or of a response not yet sent) on
// a servedType of the node's sent table.
type sentRef struct {
	n    *cacheNode
	key  sentKey
	once sync.Once
}

// release gives the hold up; it may be called more than once, and on nil.
func (r *sentRef) release() {
	if r != nil {
		r.once.Do(func() { r.n.unref(r.key) })
	}
}

// fullMap returns the map a wildcard stream keeps after being sent all of t
// (returnedAll → t's version: t.returnedMap, one map for every stream of
// every node served t, which updateDeltaSubscription copies before it could
// be modified) and the hold that keeps t in the sent table for it. Called
// with n.mu held.
func (n *cacheNode) fullMap(typeURL string, t *servedType) (map[string]string, *sentRef) {
	key := sentKey{typeURL, t.version}
	st := n.sent[key]
	if st == nil {
		if n.sent == nil {
			n.sent = make(map[sentKey]*sentType)
		}
		st = &sentType{t: t}
		n.sent[key] = st
	}
	st.refs++
	return t.returnedMap(), &sentRef{n: n, key: key}
}

// unref releases one hold on a sent servedType.
func (n *cacheNode) unref(key sentKey) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if st := n.sent[key]; st != nil {
		if st.refs--; st.refs <= 0 {
			delete(n.sent, key)
		}
	}
}

// deltaResponse is a delta response with the hold of its map, if any
// (releaser, for the ADS stream).
type deltaResponse struct {
	*cachev3.DeltaPassthroughResponse
	ref *sentRef
}

func (r *deltaResponse) sentRef() *sentRef { return r.ref }

// releaser is a response whose map may hold a servedType of the sent table.
type releaser interface{ sentRef() *sentRef }

// sentRefOf returns r's hold, nil when it has none.
func sentRefOf(r cachev3.DeltaResponse) *sentRef {
	if rr, ok := r.(releaser); ok {
		return rr.sentRef()
	}
	return nil
}

// respondDelta sends w what changed for its subscription: the resources
// whose version differs from the one the proxy has, and the names it has that
// are gone. It reports whether it sent. Called with n.mu held.
func (n *cacheNode) respondDelta(snap *Snapshot, w *deltaWatch) bool {
	typeURL := w.req.GetTypeUrl()
	t := snap.typ(typeURL)
	k := n.known(w)
	wildcard := w.sub.IsWildcard()
	var changed []*discoveryv3.Resource
	var removed []string
	if _, all := k.m[returnedAll]; wildcard && all && len(k.m) == 1 && k.base != nil {
		// The stream has all of a version and nothing else.
		changed, removed = t.diff(k.base)
	} else if wildcard {
		for r := range t.all() {
			if v, ok := k.get(r.name); !ok || v != r.hash {
				changed = append(changed, r.delta)
			}
		}
		k.names(func(name string) {
			if t.lookup(name) == nil {
				removed = append(removed, name)
			}
		})
	} else {
		for name := range w.sub.SubscribedResources() {
			v, ok := k.get(name)
			if r := t.lookup(name); r != nil {
				if !ok || v != r.hash {
					changed = append(changed, r.delta)
				}
			} else if ok {
				removed = append(removed, name)
			}
		}
		slices.SortFunc(changed, func(a, b *discoveryv3.Resource) int { return cmp.Compare(a.GetName(), b.GetName()) })
	}
	// A stream that left wildcard is given an explicit map at once, even in
	// an empty response: the server deletes unsubscribed names from it,
	// which must not leave them standing in the token's servedType.
	explicit := !wildcard && k.base != nil
	if len(changed) == 0 && len(removed) == 0 && !explicit && (!wildcard || w.req.GetResponseNonce() != "") {
		return false
	}
	slices.Sort(removed)
	var next map[string]string
	var ref *sentRef
	if wildcard && t.version != "" {
		next, ref = n.fullMap(typeURL, t)
	} else {
		subscribed := w.sub.SubscribedResources()
		next = make(map[string]string, len(subscribed))
		for name := range subscribed {
			if r := t.lookup(name); r != nil {
				next[name] = r.hash
			}
		}
	}
	w.send(&deltaResponse{DeltaPassthroughResponse: &cachev3.DeltaPassthroughResponse{
		DeltaRequest:   w.req,
		NextVersionMap: next,
		DeltaDiscoveryResponse: &discoveryv3.DeltaDiscoveryResponse{
			SystemVersionInfo: t.version,
			Resources:         changed,
			RemovedResources:  removed,
			TypeUrl:           typeURL,
		},
	}, ref: ref})
	return true
}
