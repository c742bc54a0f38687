package xds

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"iter"
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
	version string
	// The resources, sorted by name (names are unique), are the merge of
	// two sorted runs: common, a list that the snapshots of several nodes
	// hold all of (the resources of the services they reach) and share,
	// and own, the rest. Kept as one list per node, the common part was
	// 1.6 KiB per distinct workload (16 MiB at 10,000) of pointers repeated
	// from node to node, and as much again allocated by every build.
	common, own []*Resource
	// shared: the snapshot is served to more than one node (replicas of
	// one shape; Server.SetSnapshots counts them before serving it).
	shared atomic.Bool
	// anys are the resources' Any values, a full SotW response's, kept for
	// a shared type: made by its first SotW response, then shared by the
	// responses to every node. A type of one node lists them for each
	// response as it is sent instead (fullResources): kept, the lists of
	// 10,000 distinct workloads were 14 MiB of the live heap.
	anys atomic.Pointer[[]*anypb.Any]
	// returned is what a stream sent all of them remembers ({returnedAll:
	// version}), SotW or wildcard delta: one map for every stream, which
	// must never be modified (adsStream.sotwRequest and
	// updateDeltaSubscription copy it before go-control-plane's
	// subscription could). Made by the first response that needs it.
	returned atomic.Pointer[map[string]string]
}

// lookup returns the resource named name, or nil.
func (t *servedType) lookup(name string) *Resource {
	if r := search(t.own, name); r != nil {
		return r
	}
	return search(t.common, name)
}

func search(list []*Resource, name string) *Resource {
	i, ok := slices.BinarySearchFunc(list, name, func(r *Resource, name string) int { return cmp.Compare(r.name, name) })
	if !ok {
		return nil
	}
	return list[i]
}

// count is the number of resources.
func (t *servedType) count() int { return len(t.common) + len(t.own) }

// all yields the resources in name order.
func (t *servedType) all() iter.Seq[*Resource] {
	return func(yield func(*Resource) bool) {
		for c := t.cursor(); c.more(); c.next() {
			if !yield(c.peek()) {
				return
			}
		}
	}
}

// cursor walks a servedType's resources in name order.
type cursor struct{ a, b []*Resource }

func (t *servedType) cursor() cursor { return cursor{t.common, t.own} }

func (c *cursor) more() bool { return len(c.a) > 0 || len(c.b) > 0 }

// fromA reports whether the current resource is a's. Only when more.
func (c *cursor) fromA() bool { return len(c.b) == 0 || (len(c.a) > 0 && c.a[0].name < c.b[0].name) }

// peek is the current resource. Only when more.
func (c *cursor) peek() *Resource {
	if c.fromA() {
		return c.a[0]
	}
	return c.b[0]
}

// next moves to the next resource. Only when more.
func (c *cursor) next() {
	if c.fromA() {
		c.a = c.a[1:]
	} else {
		c.b = c.b[1:]
	}
}

// diff returns what a stream that has all of old lacks of t: the delta
// resources of t whose content differs from old's or that old has not, and
// the names of old's that t has not, in name order. One walk of both instead
// of a search of the other for each resource.
func (t *servedType) diff(old *servedType) (changed []*discoveryv3.Resource, removed []string) {
	if t == old {
		return nil, nil
	}
	c, o := t.cursor(), old.cursor()
	for c.more() || o.more() {
		switch {
		case !o.more() || (c.more() && c.peek().name < o.peek().name):
			changed = append(changed, c.peek().delta)
			c.next()
		case !c.more() || o.peek().name < c.peek().name:
			removed = append(removed, o.peek().name)
			o.next()
		default: // the same name
			if r := c.peek(); r.hash != o.peek().hash {
				changed = append(changed, r.delta)
			}
			c.next()
			o.next()
		}
	}
	return changed, removed
}

// fullResources returns every resource's Any, in name order: a full SotW
// response's resources. The slice of a shared type is made once and shared;
// it must not be modified.
func (t *servedType) fullResources() []*anypb.Any {
	if t.count() == 0 {
		return nil
	}
	if p := t.anys.Load(); p != nil {
		return *p
	}
	all := make([]*anypb.Any, 0, t.count())
	for r := range t.all() {
		all = append(all, r.any)
	}
	if !t.shared.Load() {
		return all
	}
	if !t.anys.CompareAndSwap(nil, &all) {
		return *t.anys.Load() // another response made it first
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
	if lists == nil || t.count() == 0 || t.shared.Load() || t.anys.Load() != nil {
		return t.fullResources(), nil
	}
	p, _ := lists.pool.Get().(*[]*anypb.Any)
	if p == nil {
		p = new([]*anypb.Any)
	}
	list := (*p)[:0]
	for r := range t.all() {
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

// version returns the version of the sorted resources: a hash of their
// names and content hashes. scratch is reused for the hash's input.
func version(typeURL string, sorted []*Resource, scratch []byte) (string, []byte, error) {
	b := scratch[:0]
	for i, r := range sorted {
		if i > 0 && sorted[i-1].name == r.name {
			return "", b, fmt.Errorf("two resources of %s are named %q", typeURL, r.name)
		}
		b = append(b, r.name...)
		b = append(b, 0)
		b = append(b, r.hash...)
		b = append(b, '\n')
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12]), b, nil
}

// Snapshot is one node's listeners and clusters. Per node it holds a version
// and the resources its own (the common lists and the encodings are shared).
type Snapshot struct {
	listeners, clusters servedType
}

// SnapshotBuilder makes snapshots, reusing its scratch space; the zero value
// is ready. It is not safe for concurrent use.
type SnapshotBuilder struct {
	scratch             []byte
	listeners, clusters commons
}

// commons finds the common lists of one type: the lists of resources that
// the snapshots of many nodes hold all of (the resources of the services a
// mesh's workloads reach, with the outbound listeners and the passthrough
// and blackhole clusters). A list with no common part found for it is kept
// (last) to find one with the next: their common resources become a common
// list, shared by every later snapshot that holds all of them.
type commons struct {
	lists [][]*Resource // most recently made first
	last  []*Resource   // the last list no common list fitted (scratch)
}

// Common lists are made from lists of at least minCommon resources and
// kept when they are at least half of both; at most maxCommons are tried.
const (
	minCommon  = 8
	maxCommons = 8
)

// split returns the resources of sorted (sorted by name, unique names) as a
// common list and the rest, newly allocated; sorted is not kept.
func (c *commons) split(sorted []*Resource) (common, own []*Resource) {
	for i, list := range c.lists {
		if holds(sorted, list) && 2*len(list) >= len(sorted) {
			if i > 0 { // most recently used first
				copy(c.lists[1:i+1], c.lists[:i])
				c.lists[0] = list
			}
			return list, minus(sorted, list)
		}
	}
	if len(sorted) >= minCommon && len(c.last) > 0 {
		if both := intersect(c.last, sorted); len(both) >= minCommon && 2*len(both) >= len(sorted) && 2*len(both) >= len(c.last) {
			list := slices.Clip(both)
			if len(c.lists) < maxCommons {
				c.lists = append(c.lists, nil)
			}
			copy(c.lists[1:], c.lists)
			c.lists[0] = list
			return list, minus(sorted, list)
		}
	}
	c.last = append(c.last[:0], sorted...)
	return nil, slices.Clone(sorted)
}

// holds reports whether sorted holds every resource of list (both sorted by
// name, names unique).
func holds(sorted, list []*Resource) bool {
	if len(list) > len(sorted) {
		return false
	}
	j := 0
	for _, r := range sorted {
		if j == len(list) {
			return true
		}
		if r == list[j] {
			j++
		} else if list[j].name <= r.name {
			return false // list[j] is not in sorted
		}
	}
	return j == len(list)
}

// intersect returns the resources a and b (sorted by name, unique names)
// both hold, newly allocated.
func intersect(a, b []*Resource) []*Resource {
	var out []*Resource
	for len(a) > 0 && len(b) > 0 {
		switch {
		case a[0] == b[0]:
			out = append(out, a[0])
			a, b = a[1:], b[1:]
		case a[0].name < b[0].name:
			a = a[1:]
		default:
			b = b[1:]
		}
	}
	return out
}

// minus returns the resources of sorted that list (which sorted holds
// all of, both sorted by name) does not, newly allocated (nil: none).
func minus(sorted, list []*Resource) []*Resource {
	n := len(sorted) - len(list)
	if n == 0 {
		return nil
	}
	out := make([]*Resource, 0, n)
	j := 0
	for _, r := range sorted {
		if j < len(list) && r == list[j] {
			j++
			continue
		}
		out = append(out, r)
	}
	return out
}

// Snapshot returns the snapshot of listeners and clusters (in any order;
// names must be unique per type), versioned by their names and hashes. It
// sorts the slices in place and does not keep them: the caller may reuse
// them.
func (b *SnapshotBuilder) Snapshot(listeners, clusters []*Resource) (*Snapshot, error) {
	s := &Snapshot{}
	for _, part := range []struct {
		t         *servedType
		typeURL   string
		resources []*Resource
		commons   *commons
	}{
		{&s.listeners, resourcev3.ListenerType, listeners, &b.listeners},
		{&s.clusters, resourcev3.ClusterType, clusters, &b.clusters},
	} {
		slices.SortFunc(part.resources, func(a, b *Resource) int { return cmp.Compare(a.name, b.name) })
		v, scratch, err := version(part.typeURL, part.resources, b.scratch)
		b.scratch = scratch
		if err != nil {
			return nil, err
		}
		part.t.version = v
		part.t.common, part.t.own = part.commons.split(part.resources)
	}
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
