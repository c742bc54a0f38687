package xds

import (
	"maps"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// adsServer serves ADS streams, SotW and delta, from the servingCache. It
// stands in for go-control-plane's server, which runs two goroutines per
// stream (one receiving requests, one sending responses) and keeps a watch
// channel and its own copy of every subscription per stream. Here a stream
// has no goroutine of its own: the connection's reader (h2conn.go) hands it
// each request, which it records (the tracker: identity, ACK, NACK) and opens a watch in the
// cache. Whatever the cache answers — at once, or when a snapshot changes —
// goes into the stream's outbox, and a small pool of push workers
// (pushQueue) sends it, paced by the connections' writers (pace.go): a
// thousand proxies cost a thousand goroutines fewer, no goroutine waits on a
// watch, and ten thousand proxies connecting at once do not each hold a
// marshalled configuration until it is written.
//
// The protocol is go-control-plane's, as Envoy expects it: a response's nonce
// counts up per stream; a SotW request whose nonce is not the last one sent
// for its type is stale and ignored; every delta request updates the
// subscription; after a response a type has no watch until the proxy's next
// request of it (its ACK or NACK), so a proxy has at most one response per
// type unanswered; responses of a stream go out in the order the cache gave
// them (clusters before listeners). Subscriptions, with the legacy wildcard
// rules, are go-control-plane's stream.Subscription.
type adsServer struct {
	cache   *servingCache
	tracker *tracker
	ids     atomic.Int64
	pushes  pushQueue
	// lists lends pushes the lists of their full SotW responses.
	lists anyLists
}

func newADSServer(cache *servingCache, tracker *tracker, fs *flights) *adsServer {
	return &adsServer{cache: cache, tracker: tracker, pushes: pushQueue{max: max(4, 2*runtime.GOMAXPROCS(0)), flights: fs}}
}

// adsStream is one ADS stream.
type adsStream struct {
	ads      *adsServer
	id       int64
	protocol string
	send     sender

	// sendMu serialises sending (a stream is flushed by one push worker at a
	// time, but a worker may start while another finishes); it is taken
	// before mu, never while mu is held.
	sendMu sync.Mutex

	mu     sync.Mutex // guards the fields below; taken before a cache node's lock
	node   string     // set by the first request
	types  []*typeStream
	nonce  int64 // of the last response
	closed bool

	// outMu guards the outbox. The cache puts responses into it with a
	// node's lock held, so it is taken last and nothing is called under it.
	outMu  sync.Mutex
	out    []pendingResponse
	queued bool // in the push queue
}

// typeStream is a stream's state for one resource type.
type typeStream struct {
	url   string
	sub   stream.Subscription
	nonce string // of the last response of this type, "" before the first
	// gen counts the watches opened for the type: a response of an older
	// watch, superseded by a newer request, is dropped unsent.
	gen    uint64
	cancel func() // of the open watch, if any
	// named: a SotW request of the type named resources, which ends
	// go-control-plane's legacy wildcard (see sotwRequest)
	named bool
	// ref: the hold of the delta map the subscription has on the cache's
	// sent table (see sentRef), released when the map is replaced
	ref *sentRef
}

// pendingResponse is a response the cache gave a watch, not yet sent.
type pendingResponse struct {
	ts    *typeStream
	gen   uint64
	sotw  cachev3.Response
	delta cachev3.DeltaResponse
}

// release gives up the hold of a delta response's map (see sentRef) when
// the response is dropped unsent.
func (p pendingResponse) release() {
	if p.delta != nil {
		sentRefOf(p.delta).release()
	}
}

// sender sends a stream's responses: SendMsg marshals one and queues it
// for the connection's writer; abort ends the call with an error's status,
// from a push worker (h2stream).
type sender interface {
	SendMsg(m any) error
	abort(err error)
}

// methods are the ADS methods, SotW and delta, for the transport.
func (a *adsServer) methods() map[string]method {
	return map[string]method{
		"/" + adsService + "/StreamAggregatedResources": func(st *h2stream) (call, error) {
			return openADS(a, st, protocolSotW, (*adsStream).sotwRequest)
		},
		"/" + adsService + "/DeltaAggregatedResources": func(st *h2stream) (call, error) {
			return openADS(a, st, protocolDelta, (*adsStream).deltaRequest)
		},
	}
}

// adsCall is one ADS stream as the transport drives it: each request the
// proxy sends goes to handle, on the connection's reader goroutine.
type adsCall[Req any, P interface {
	*Req
	proto.Message
}] struct {
	s      *adsStream
	handle func(*adsStream, P) error
}

// openADS registers a new stream with the tracker, with the peer and the
// SANs of its verified client certificate (checked against the node id
// later).
func openADS[Req any, P interface {
	*Req
	proto.Message
}](a *adsServer, st *h2stream, protocol string, handle func(*adsStream, P) error) (call, error) {
	s := &adsStream{ads: a, id: a.ids.Add(1), protocol: protocol, send: st}
	if err := a.tracker.open(st.c.peer, st.c.chains, protocol, s.id); err != nil {
		return nil, err
	}
	return &adsCall[Req, P]{s: s, handle: handle}, nil
}

func (c *adsCall[Req, P]) message(b []byte) error {
	req := P(new(Req))
	if err := unmarshal(b, req); err != nil {
		return err
	}
	return c.handle(c.s, req)
}

// halfClose: the proxy ended its side; the stream ends with status OK, as
// go-control-plane's server.
func (c *adsCall[Req, P]) halfClose() error { return errCallDone }

func (c *adsCall[Req, P]) closed() { c.s.close() }

// close cancels the stream's watches and forgets its responses not yet
// sent, releasing what their maps and its subscriptions' hold.
func (s *adsStream) close() {
	s.mu.Lock()
	s.closed = true
	for _, ts := range s.types {
		ts.cancelWatch()
		ts.ref.release()
	}
	s.mu.Unlock()
	s.outMu.Lock()
	out := s.out
	s.out = nil
	s.outMu.Unlock()
	for _, p := range out { // not under outMu: releasing takes a cache node's lock
		p.release()
	}
	s.ads.tracker.close(s.protocol, s.id)
}

func (ts *typeStream) cancelWatch() {
	if ts.cancel != nil {
		ts.cancel()
		ts.cancel = nil
	}
}

// typ returns the stream's state of url, nil when it has none yet. Called
// with mu held.
func (s *adsStream) typ(url string) *typeStream {
	for _, ts := range s.types {
		if ts.url == url {
			return ts
		}
	}
	return nil
}

// errNoTypeURL refuses an ADS request without a type.
var errNoTypeURL = status.Error(codes.InvalidArgument, "type URL is required for ADS")

// adsRequest is what SotW and delta requests have in common.
type adsRequest interface {
	GetNode() *corev3.Node
	GetTypeUrl() string
	GetResponseNonce() string
	GetErrorDetail() *rpcstatus.Status
}

// record refuses a request without a type, records it in the tracker (ACK,
// NACK, identity; version is a SotW request's, "" for delta) and returns
// its type URL.
func (s *adsStream) record(req adsRequest, version string) (string, error) {
	url := req.GetTypeUrl()
	if url == "" {
		return "", errNoTypeURL
	}
	detail := req.GetErrorDetail()
	return url, s.ads.tracker.request(s.protocol, s.id, req.GetNode(), url, req.GetResponseNonce(), version,
		detail.GetMessage(), detail != nil)
}

// sotwRequest records a SotW request and opens its type's watch, unless it
// is stale (its nonce is not the last one sent for its type).
func (s *adsStream) sotwRequest(req *discoveryv3.DiscoveryRequest) error {
	url, err := s.record(req, req.GetVersionInfo())
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setNode(req.GetNode().GetId())
	ts := s.typ(url)
	if ts == nil {
		ts = &typeStream{url: url, sub: stream.NewSotwSubscription(req.GetResourceNames(), true), named: len(req.GetResourceNames()) > 0}
		s.types = append(s.types, ts)
	} else {
		if ts.nonce != "" && req.GetResponseNonce() != ts.nonce {
			// A request about an older response: the proxy has not seen
			// the last one yet and will answer it.
			return nil
		}
		ts.cancelWatch()
		names := req.GetResourceNames()
		if (ts.named || len(names) > 0) && !slices.Contains(names, "*") {
			// go-control-plane's subscription deletes the names no longer
			// asked for from the returned map, in place: the map may be
			// the one a servedType shares between streams.
			ts.sub.SetReturnedResources(maps.Clone(ts.sub.ReturnedResources()))
		}
		ts.named = ts.named || len(names) > 0
		ts.sub.SetResourceSubscription(names)
	}
	ts.gen++
	gen := ts.gen
	// The watch keeps the request until the next one: not what was read
	// from it already. Envoy sends its node (a few KiB: build, extensions)
	// with every request unless set_node_on_first_message_only.
	req.Node, req.ResourceNames = nil, nil
	ts.cancel = s.ads.cache.CreateWatch(s.node, req, ts.sub, func(r cachev3.Response) {
		s.put(pendingResponse{ts: ts, gen: gen, sotw: r})
	})
	return nil
}

// deltaRequest records a delta request, updates its type's subscription
// and opens its watch.
func (s *adsStream) deltaRequest(req *discoveryv3.DeltaDiscoveryRequest) error {
	url, err := s.record(req, "")
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setNode(req.GetNode().GetId())
	ts := s.typ(url)
	if ts == nil {
		ts = &typeStream{url: url, sub: stream.NewDeltaSubscription(req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe(),
			req.GetInitialResourceVersions(), true)}
		s.types = append(s.types, ts)
	} else {
		ts.cancelWatch()
		updateDeltaSubscription(&ts.sub, req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe())
	}
	ts.gen++
	gen := ts.gen
	// As for SotW: the watch keeps only what it reads.
	req.Node, req.ResourceNamesSubscribe, req.ResourceNamesUnsubscribe, req.InitialResourceVersions = nil, nil, nil, nil
	ts.cancel = s.ads.cache.CreateDeltaWatch(s.node, req, ts.sub, func(r cachev3.DeltaResponse) {
		s.put(pendingResponse{ts: ts, gen: gen, delta: r})
	})
	return nil
}

// updateDeltaSubscription applies a delta request's subscriptions to sub.
// go-control-plane's subscription writes an unsubscribed name into the map
// of returned versions, in place: the map may be the one a servedType shares
// between streams (servedType.returnedMap), so it is copied first.
func updateDeltaSubscription(sub *stream.Subscription, subscribe, unsubscribe []string) {
	if len(unsubscribe) > 0 {
		sub.SetReturnedResources(maps.Clone(sub.ReturnedResources()))
	}
	sub.UpdateResourceSubscriptions(subscribe, unsubscribe)
}

// setNode records the stream's node id from its first request (the tracker
// has refused a stream without one, or whose node id changes). Called with
// mu held.
func (s *adsStream) setNode(id string) {
	if s.node == "" {
		s.node = id
	}
}

// put queues a response the cache gave one of the stream's watches, and
// schedules the stream for a push worker. Called with a cache node's lock
// held: it must not block.
func (s *adsStream) put(p pendingResponse) {
	s.outMu.Lock()
	s.out = append(s.out, p)
	schedule := !s.queued
	s.queued = true
	s.outMu.Unlock()
	if schedule {
		s.ads.pushes.push(s)
	}
}

// next takes the oldest response of the outbox.
func (s *adsStream) next() (pendingResponse, bool) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	if len(s.out) == 0 {
		return pendingResponse{}, false
	}
	p := s.out[0]
	s.out[0] = pendingResponse{}
	s.out = s.out[1:]
	if len(s.out) == 0 {
		s.out = nil
	}
	return p, true
}

// flush sends the outbox's responses in order (only push workers send).
// Each gets the stream's next nonce, and its type's subscription records
// what it returned, before it is sent: the proxy's answer may come back at
// once. Before each send it waits for last, the worker's previous response,
// to be written (see pace.go); it returns the flight of the last response
// it sent.
func (s *adsStream) flush(fs *flights, last *flight) (*flight, error) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	for {
		s.mu.Lock()
		p, ok := s.next()
		if !ok {
			s.mu.Unlock()
			return last, nil
		}
		if s.closed || p.gen != p.ts.gen {
			s.mu.Unlock()
			p.release()
			continue
		}
		s.nonce++
		nonce := strconv.FormatInt(s.nonce, 10)
		p.ts.nonce = nonce
		var msg any
		var version string
		var borrowed *[]*anypb.Any // the response's list, given back once it is encoded
		if p.sotw != nil {
			var r *discoveryv3.DiscoveryResponse
			var err error
			if sr, ok := p.sotw.(*sotwResponse); ok {
				r, borrowed = sr.pushResponse(&s.ads.lists)
			} else {
				r, err = p.sotw.GetDiscoveryResponse()
			}
			if err != nil {
				s.mu.Unlock()
				return last, status.Errorf(codes.Internal, "response of %s: %v", p.ts.url, err)
			}
			r.Nonce = nonce
			p.ts.sub.SetReturnedResources(p.sotw.GetReturnedResources())
			msg, version = r, r.GetVersionInfo()
		} else {
			r, err := p.delta.GetDeltaDiscoveryResponse()
			if err != nil {
				s.mu.Unlock()
				p.release()
				return last, status.Errorf(codes.Internal, "response of %s: %v", p.ts.url, err)
			}
			r.Nonce = nonce
			p.ts.sub.SetReturnedResources(p.delta.GetNextVersionMap())
			// The map replaced no longer needs what it held.
			p.ts.ref.release()
			p.ts.ref = sentRefOf(p.delta)
			msg, version = r, r.GetSystemVersionInfo()
		}
		s.mu.Unlock()
		s.ads.tracker.response(s.protocol, s.id, p.ts.url, nonce, version)
		if fs != nil {
			last.wait()
			last = fs.expect(msg)
		}
		err := s.send.SendMsg(msg)
		s.ads.lists.giveBack(borrowed) // SendMsg encoded it, or never will
		if err != nil {
			fs.take(msg)
			return last, err
		}
		if b, ok := s.send.(interface{ backlogged() bool }); ok && b.backlogged() {
			// Queued behind responses the proxy has not read: waiting for
			// it would hold the worker back for a proxy that may not read.
			last = nil
		}
	}
}

// pushQueue runs the pushes: streams whose watches the cache answered, sent
// by at most max workers, started when there is work and ending when there
// is none. A send returns once the message is queued for the connection's
// writer (h2write.go): it never waits for the proxy to read, and a proxy
// that answers each response before the next (see adsServer) has at most
// one response per type queued.
type pushQueue struct {
	max     int
	flights *flights // nil: no pacing

	mu      sync.Mutex
	streams []*adsStream
	workers int
}

func (q *pushQueue) push(s *adsStream) {
	q.mu.Lock()
	q.streams = append(q.streams, s)
	start := q.workers < q.max
	if start {
		q.workers++
	}
	q.mu.Unlock()
	if start {
		go q.work()
	}
}

func (q *pushQueue) work() {
	var last *flight
	for {
		q.mu.Lock()
		if len(q.streams) == 0 {
			q.streams = nil
			q.workers--
			q.mu.Unlock()
			return
		}
		s := q.streams[0]
		q.streams[0] = nil
		q.streams = q.streams[1:]
		q.mu.Unlock()
		s.outMu.Lock()
		s.queued = false
		s.outMu.Unlock()
		// A push that failed (the response could not be built or
		// marshalled) ends the call with its status, Internal, and the
		// proxy reconnects: kept open, the stream would wedge the type, as
		// the response's nonce was taken but never sent.
		var err error
		if last, err = s.flush(q.flights, last); err != nil {
			s.send.abort(err)
		}
	}
}
