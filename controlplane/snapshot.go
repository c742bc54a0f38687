package controlplane

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// ErrUnknownNode is returned for a node id that no workload of the mesh has.
var ErrUnknownNode = errors.New("no workload has this node id")

// Versions are the content-hash versions of one node's resources, per type. Equal
// resources give equal versions in every process and replica, so an unchanged
// config pushes nothing and replicas agree.
type Versions struct {
	Listeners string `json:"listeners"`
	Clusters  string `json:"clusters"`
}

// nodeSnapshot is what one node is served.
type nodeSnapshot struct {
	resources Resources
	versions  Versions
	snapshot  *cachev3.Snapshot
}

// build is the outcome of turning one mesh into every node's snapshot.
type build struct {
	mesh     *Mesh
	nodes    map[string]*nodeSnapshot
	duration time.Duration
}

// maxBuildErrors bounds the errors reported for one invalid mesh: a mistake
// shared by a thousand nodes is reported a few times, not a thousand.
const maxBuildErrors = 20

// buildSnapshots generates, validates and versions the resources of every
// workload of m. It fails, and nothing is served from it, when any node's
// resources fail validation (errors match ErrInvalidResources).
func buildSnapshots(m *Mesh) (*build, error) {
	start := time.Now()
	if err := m.Validate(); err != nil {
		return nil, err
	}
	g := newGenerator(m)
	ch := newChecker()
	h := newHasher()
	b := &build{mesh: m, nodes: make(map[string]*nodeSnapshot, len(m.Workloads))}
	var errs []error
	for i := range m.Workloads {
		w := &m.Workloads[i]
		r := g.workload(w)
		if err := ch.check(w.NodeID, r); err != nil {
			if len(errs) < maxBuildErrors {
				errs = append(errs, err)
			}
			continue
		}
		ns, err := h.snapshot(r)
		if err != nil {
			if len(errs) < maxBuildErrors {
				errs = append(errs, fmt.Errorf("node %q: %w", w.NodeID, err))
			}
			continue
		}
		b.nodes[w.NodeID] = ns
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	b.duration = time.Since(start)
	return b, nil
}

// hasher computes content hashes of resources, each distinct resource once.
type hasher struct {
	hashes map[proto.Message]string
}

func newHasher() *hasher { return &hasher{hashes: make(map[proto.Message]string)} }

// marshal is deterministic, so equal resources hash equally.
var marshal = proto.MarshalOptions{Deterministic: true}

func (h *hasher) hash(m proto.Message) (string, error) {
	if v, ok := h.hashes[m]; ok {
		return v, nil
	}
	b, err := marshal.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("marshal %s: %w", cachev3.GetResourceName(m), err)
	}
	sum := sha256.Sum256(b)
	v := hex.EncodeToString(sum[:12])
	h.hashes[m] = v
	return v, nil
}

// group returns the version of a resource list and its name → hash map (the
// delta protocol's per-resource versions).
func (h *hasher) group(resources []types.Resource) (string, map[string]string, error) {
	names := make([]string, 0, len(resources))
	hashes := make(map[string]string, len(resources))
	for _, r := range resources {
		name := cachev3.GetResourceName(r)
		v, err := h.hash(r)
		if err != nil {
			return "", nil, err
		}
		names = append(names, name)
		hashes[name] = v
	}
	slices.Sort(names)
	d := sha256.New()
	for _, n := range names {
		d.Write([]byte(n))
		d.Write([]byte{0})
		d.Write([]byte(hashes[n]))
		d.Write([]byte{'\n'})
	}
	return hex.EncodeToString(d.Sum(nil)[:12]), hashes, nil
}

func (h *hasher) snapshot(r Resources) (*nodeSnapshot, error) {
	listeners := make([]types.Resource, len(r.Listeners))
	for i, l := range r.Listeners {
		listeners[i] = l
	}
	clusters := make([]types.Resource, len(r.Clusters))
	for i, c := range r.Clusters {
		clusters[i] = c
	}
	lv, lh, err := h.group(listeners)
	if err != nil {
		return nil, err
	}
	cv, chs, err := h.group(clusters)
	if err != nil {
		return nil, err
	}
	s := &cachev3.Snapshot{}
	s.Resources[types.Listener] = cachev3.NewResources(lv, listeners)
	s.Resources[types.Cluster] = cachev3.NewResources(cv, clusters)
	// Delta's per-resource versions are the content hashes computed above;
	// filling the map here saves the cache marshalling every resource of every
	// node again.
	s.VersionMap = map[string]map[string]string{
		resourcev3.ListenerType: lh,
		resourcev3.ClusterType:  chs,
	}
	if err := s.Consistent(); err != nil {
		return nil, fmt.Errorf("snapshot is not consistent: %w", err)
	}
	return &nodeSnapshot{resources: r, versions: Versions{Listeners: lv, Clusters: cv}, snapshot: s}, nil
}
