package xds

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// Versions are the content-hash versions of one node's resources, per type.
// Equal resources give equal versions in every process and replica, so an
// unchanged config pushes nothing and replicas agree.
type Versions struct {
	Listeners string `json:"listeners"`
	Clusters  string `json:"clusters"`
}

// Resource is one distinct resource as it is served: its encoding, wrapped
// once in the Any of SotW responses and the Resource of delta responses, and
// its content hash (its delta version). Nodes whose resources are equal share
// one; nothing modifies it once built, and any number of responses marshal it
// concurrently.
type Resource struct {
	name  string
	hash  string
	any   *anypb.Any
	delta *discoveryv3.Resource
}

// NewResource returns the served form of a resource named name, of type
// typeURL, whose deterministic protobuf encoding is encoded (it is kept, not
// copied, and must not be modified afterwards). Equal encodings get equal
// hashes.
func NewResource(name, typeURL string, encoded []byte) *Resource {
	sum := sha256.Sum256(encoded)
	a := &anypb.Any{TypeUrl: typeURL, Value: encoded}
	hash := hex.EncodeToString(sum[:12])
	return &Resource{name: name, hash: hash, any: a, delta: &discoveryv3.Resource{Name: name, Version: hash, Resource: a}}
}

// servedType is what a node is served of one resource type.
type servedType struct {
	version   string
	resources []*Resource // sorted by name; names are unique
	// shared: the snapshot is served to more than one node (replicas of
	// one shape; Server.SetSnapshots counts them before serving it).
	shared atomic.Bool
	// all is resources[i].any, a full SotW response's resources, kept for
	// a shared type: made by its first SotW response, then shared by the
	// responses to every node. A type of one node lists them for each
	// response as it is sent instead (fullResources): kept, the lists of
	// 10,000 distinct workloads were 14 MiB of the live heap.
	all atomic.Pointer[[]*anypb.Any]
	// returned is what a stream sent all of them remembers ({returnedAll:
	// version}), SotW or wildcard delta: one map for every stream, which
	// must never be modified (adsStream.sotwRequest and
	// updateDeltaSubscription copy it before go-control-plane's
	// subscription could). Made by the first response that needs it.
	returned atomic.Pointer[map[string]string]
}

// lookup returns the resource named name, or nil.
func (t *servedType) lookup(name string) *Resource {
	i, ok := slices.BinarySearchFunc(t.resources, name, func(r *Resource, name string) int { return cmp.Compare(r.name, name) })
	if !ok {
		return nil
	}
	return t.resources[i]
}

// fullResources returns every resource's Any, in name order: a full SotW
// response's resources. The slice of a shared type is made once and shared;
// it must not be modified.
func (t *servedType) fullResources() []*anypb.Any {
	if len(t.resources) == 0 {
		return nil
	}
	if p := t.all.Load(); p != nil {
		return *p
	}
	all := make([]*anypb.Any, len(t.resources))
	for i, r := range t.resources {
		all[i] = r.any
	}
	if !t.shared.Load() {
		return all
	}
	if !t.all.CompareAndSwap(nil, &all) {
		return *t.all.Load() // another response made it first
	}
	return all
}

// anyLists lends the lists of full SotW responses of types only one node is
// served (servedType.borrow), reused from push to push: made for each
// response, they were 0.8 KiB of garbage per response of 100 resources,
// 16 MB per change at 10,000 distinct workloads. The zero value is ready.
type anyLists struct{ pool sync.Pool } // of *[]*anypb.Any

// borrow returns what fullResources does; for a type of one node the list
// is borrowed from lists (nil: made anew): give it back (anyLists.giveBack)
// once the response holding it is encoded.
func (t *servedType) borrow(lists *anyLists) ([]*anypb.Any, *[]*anypb.Any) {
	if lists == nil || len(t.resources) == 0 || t.shared.Load() || t.all.Load() != nil {
		return t.fullResources(), nil
	}
	p, _ := lists.pool.Get().(*[]*anypb.Any)
	if p == nil {
		p = new([]*anypb.Any)
	}
	list := (*p)[:0]
	for _, r := range t.resources {
		list = append(list, r.any)
	}
	*p = list
	return list, p
}

// giveBack returns a list borrow lent (nil: none).
func (l *anyLists) giveBack(p *[]*anypb.Any) {
	if p == nil {
		return
	}
	clear(*p) // holds no snapshot's resources while pooled
	*p = (*p)[:0]
	l.pool.Put(p)
}

// returnedMap returns the map {returnedAll: version} that every stream
// sent all of t keeps; it must not be modified.
func (t *servedType) returnedMap() map[string]string {
	if t == emptyType {
		return map[string]string{returnedAll: ""} // no state kept in the shared empty type
	}
	if p := t.returned.Load(); p != nil {
		return *p
	}
	m := map[string]string{returnedAll: t.version}
	if !t.returned.CompareAndSwap(nil, &m) {
		return *t.returned.Load()
	}
	return m
}

// init sorts resources by name, in place, keeps them, and versions them by
// a hash of their names and content hashes. scratch is reused for the hash's
// input.
func (t *servedType) init(typeURL string, resources []*Resource, scratch []byte) ([]byte, error) {
	t.resources = slices.Clip(resources)
	slices.SortFunc(t.resources, func(a, b *Resource) int { return cmp.Compare(a.name, b.name) })
	b := scratch[:0]
	for i, r := range t.resources {
		if i > 0 && t.resources[i-1].name == r.name {
			return scratch, fmt.Errorf("two resources of %s are named %q", typeURL, r.name)
		}
		b = append(b, r.name...)
		b = append(b, 0)
		b = append(b, r.hash...)
		b = append(b, '\n')
	}
	sum := sha256.Sum256(b)
	t.version = hex.EncodeToString(sum[:12])
	return b, nil
}

// Snapshot is one node's listeners and clusters. Per node it holds a version
// and a slice of pointers per type: the encodings are shared.
type Snapshot struct {
	listeners, clusters servedType
}

// SnapshotBuilder makes snapshots, reusing its scratch space; the zero value
// is ready. It is not safe for concurrent use.
type SnapshotBuilder struct {
	scratch []byte
}

// Snapshot returns the snapshot of listeners and clusters (in any order;
// names must be unique per type), versioned by their names and hashes. It
// sorts the slices in place and keeps them: the caller must not modify them
// afterwards.
func (b *SnapshotBuilder) Snapshot(listeners, clusters []*Resource) (*Snapshot, error) {
	s := &Snapshot{}
	scratch, err := s.listeners.init(resourcev3.ListenerType, listeners, b.scratch)
	if err != nil {
		return nil, err
	}
	scratch, err = s.clusters.init(resourcev3.ClusterType, clusters, scratch)
	if err != nil {
		return nil, err
	}
	b.scratch = scratch
	return s, nil
}

// markShared records that the snapshot is served to more than one node (see
// servedType.shared). Called before it is served.
func (s *Snapshot) markShared() {
	s.listeners.shared.Store(true)
	s.clusters.shared.Store(true)
}

// Versions are the snapshot's versions.
func (s *Snapshot) Versions() Versions {
	return Versions{Listeners: s.listeners.version, Clusters: s.clusters.version}
}

var emptyType = &servedType{}

// typ returns the node's resources of typeURL; other types are served empty.
func (s *Snapshot) typ(typeURL string) *servedType {
	switch typeURL {
	case resourcev3.ListenerType:
		return &s.listeners
	case resourcev3.ClusterType:
		return &s.clusters
	}
	return emptyType
}

// GetVersion is the version of typeURL ("" for types that are not served).
func (s *Snapshot) GetVersion(typeURL string) string { return s.typ(typeURL).version }
