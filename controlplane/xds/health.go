package xds

import (
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// healthServer is gRPC's health service (grpc.health.v1.Health) on the xDS
// address, as gRPC-go's health.Server answers it: Check returns a service's
// status (NOT_FOUND for a service it does not know); Watch sends it at once
// (SERVICE_UNKNOWN for an unknown service) and then each change; after
// shutdown every service is NOT_SERVING for good.
type healthServer struct {
	mu       sync.Mutex
	statuses map[string]healthpb.HealthCheckResponse_ServingStatus
	watches  []*healthWatch
	shutdown bool
}

func newHealthServer() *healthServer {
	return &healthServer{statuses: make(map[string]healthpb.HealthCheckResponse_ServingStatus)}
}

const healthService = "grpc.health.v1.Health"

func (h *healthServer) methods() map[string]method {
	return map[string]method{
		"/" + healthService + "/Check": func(st *h2stream) (call, error) { return &healthCheck{h: h, st: st}, nil },
		"/" + healthService + "/Watch": func(st *h2stream) (call, error) { return &healthWatch{h: h, st: st}, nil },
	}
}

// set sets a service's status and sends it to its watches.
func (h *healthServer) set(service string, s healthpb.HealthCheckResponse_ServingStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shutdown {
		return
	}
	h.setLocked(service, s)
}

func (h *healthServer) setLocked(service string, s healthpb.HealthCheckResponse_ServingStatus) {
	h.statuses[service] = s
	for _, w := range h.watches {
		if w.service == service && w.last != s {
			w.last = s
			_ = w.st.SendMsg(&healthpb.HealthCheckResponse{Status: s}) // fails only once the call ended
		}
	}
}

// stop makes every service NOT_SERVING, for good.
func (h *healthServer) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.shutdown = true
	for service := range h.statuses {
		h.setLocked(service, healthpb.HealthCheckResponse_NOT_SERVING)
	}
}

// healthCheck is one Check call.
type healthCheck struct {
	h  *healthServer
	st *h2stream
}

func (c *healthCheck) message(b []byte) error {
	var req healthpb.HealthCheckRequest
	if err := unmarshal(b, &req); err != nil {
		return err
	}
	c.h.mu.Lock()
	s, ok := c.h.statuses[req.GetService()]
	c.h.mu.Unlock()
	if !ok {
		return status.Error(codes.NotFound, "unknown service")
	}
	if err := c.st.SendMsg(&healthpb.HealthCheckResponse{Status: s}); err != nil {
		return err
	}
	return errCallDone
}

func (c *healthCheck) halfClose() error {
	return status.Error(codes.Internal, "no request message")
}

func (c *healthCheck) closed() {}

// healthWatch is one Watch call, registered once its request came.
type healthWatch struct {
	h       *healthServer
	st      *h2stream
	service string
	last    healthpb.HealthCheckResponse_ServingStatus
	started bool
}

func (w *healthWatch) message(b []byte) error {
	if w.started {
		return status.Error(codes.Internal, "more than one request message")
	}
	var req healthpb.HealthCheckRequest
	if err := unmarshal(b, &req); err != nil {
		return err
	}
	w.started, w.service = true, req.GetService()
	h := w.h
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.statuses[w.service]
	if !ok {
		s = healthpb.HealthCheckResponse_SERVICE_UNKNOWN
	}
	w.last = s
	h.watches = append(h.watches, w)
	return w.st.SendMsg(&healthpb.HealthCheckResponse{Status: s})
}

func (w *healthWatch) halfClose() error {
	if !w.started {
		return status.Error(codes.Internal, "no request message")
	}
	return nil // the watch goes on until the client cancels it
}

func (w *healthWatch) closed() {
	w.h.mu.Lock()
	defer w.h.mu.Unlock()
	w.h.watches = slices.DeleteFunc(w.h.watches, func(o *healthWatch) bool { return o == w })
}
