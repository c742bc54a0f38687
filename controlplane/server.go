package controlplane

import (
	"context"
	"log/slog"
	"sync"

	"github.com/detour-mesh/detour/controlplane/xds"
)

// Server is the control plane: it turns each Mesh given to Update into every
// node's snapshot and serves them with its xds.Server (ADS, health, metrics,
// /debug/nodes: the embedded methods). It implements Sink. A Server is safe
// for concurrent use.
type Server struct {
	*xds.Server
	log *slog.Logger

	buildMu sync.Mutex // serialises builds: each starts from the last one's memo
	memo    *buildMemo // of the last build served
}

// NewServer returns a Server with no mesh yet: proxies that connect wait until
// the first Update.
func NewServer(opts xds.Options) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{Server: xds.NewServer(opts), log: log}
}

// Update makes m the served mesh. m is validated, every node's resources are
// generated and validated deeply, and only when all of them pass are the
// snapshots of the nodes whose versions changed replaced. Otherwise the error
// is returned (it matches redirect.ErrInvalid or ErrInvalidResources), counted
// as a rejected update, and the previous mesh keeps being served.
func (s *Server) Update(ctx context.Context, m *Mesh) (xds.UpdateResult, error) {
	s.buildMu.Lock()
	b, err := buildFrom(m, s.memo)
	if err == nil {
		s.memo = b.memo
	}
	s.buildMu.Unlock()
	if err != nil {
		s.Reject(err)
		return xds.UpdateResult{}, err
	}
	excluded := make([]xds.Excluded, len(m.Excluded))
	for i, e := range m.Excluded {
		excluded[i] = xds.Excluded{NodeID: e.NodeID, Reason: e.Reason}
	}
	res, err := s.SetSnapshots(ctx, xds.Snapshots{Nodes: b.nodes, Build: b.duration, ChangedAt: b.start, Excluded: excluded})
	if err != nil {
		return res, err
	}
	s.log.Info("mesh applied", "workloads", len(m.Workloads), "services", len(m.Services),
		"pushed", len(res.Pushed), "removed", len(res.Removed), "unchanged", res.Unchanged, "build", b.duration)
	return res, nil
}

// Invalid records a mesh change that could not be read or decoded: it is
// logged and counted, and the previous mesh keeps being served.
func (s *Server) Invalid(err error) { s.Reject(err) }
