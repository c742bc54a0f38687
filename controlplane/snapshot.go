package controlplane

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/detour-mesh/detour/controlplane/xds"
)

// ErrUnknownNode is returned for a node id that no workload of the mesh has.
var ErrUnknownNode = errors.New("no workload has this node id")

// build is the outcome of turning one mesh into every node's snapshot.
type build struct {
	nodes    map[string]*xds.Snapshot
	start    time.Time // when the build began: when the change was seen
	duration time.Duration
	memo     *buildMemo // for the next build
}

// buildMemo is what a build leaves for the next one: each workload's own
// resources (ownResources: its inbound listeners, local app and inbound
// passthrough clusters), by the key of the values the generator made them
// of, each with its served form and what the checker found of it. A workload
// the change left alone gets the same resources again, and the next build
// neither generates, validates nor encodes them again: a change of one
// service no longer rebuilds every workload's own inbound listener and
// cluster (30,000 of them at 10,000 distinct workloads, most of a build's
// garbage and time). The resources of outbound parts (outboundPart) are made
// once per part and build, and not kept.
//
// The memo keeps no generated resource: the next build's generator hands out
// the entry (memoEntry) instead, and the checker and the hasher read of it
// what they would read of the resource — its name, served form, address and
// cluster references; the checks that read anything else are properties of
// the resource alone, which it passed. Kept whole, the protos were about
// 2 KiB per distinct workload (20 MiB at 10,000) for nothing the next build
// reads, and a message of the resource's type holding only its name (the
// memo's token before the entries) 1.5 KiB (14.7 MiB).
type buildMemo struct {
	listeners, clusters map[string]*memoEntry // by key
	// captures are the redirect answers (generator.captures), which depend
	// on the config's encoding and the destination alone.
	captures map[captureKey]bool
}

// memoEntry is a valid resource of a workload's own, as a build served it.
// Only a listener that binds its address and is not UDP has one (see
// memoizable): the checker reads the others' addresses for the DNS table's
// checks.
type memoEntry struct {
	key    string // in the memo
	name   string
	served *xds.Resource
	// Of a listener (listener): its address (listenerAddress) and the
	// clusters it refers to (checker.clusterRefs).
	listener bool
	addr     string
	refs     []string
}

func newMemo(listeners, clusters int) *buildMemo {
	return &buildMemo{
		listeners: make(map[string]*memoEntry, listeners),
		clusters:  make(map[string]*memoEntry, clusters),
	}
}

// memoizable reports whether the checker reads nothing of l but what a
// memoEntry records: it binds its address (listeners that do not are the
// service listeners a DNS table's answers are checked against) and is not
// UDP (DNS listeners, whose tables are read).
func memoizable(l *listenerv3.Listener) bool {
	if b := l.GetBindToPort(); b != nil && !b.GetValue() {
		return false
	}
	return l.GetAddress().GetSocketAddress().GetProtocol() != corev3.SocketAddress_UDP
}

// newBuildMemo returns what this build leaves for the next: the entries of
// the previous build's memo it handed out (g.next) and an entry of each
// workload's own resource it made. Called once every node passed.
func newBuildMemo(g *generator, ch *checker, h *hasher) *buildMemo {
	p := g.next
	p.captures = g.captures
	for k, l := range g.own.listeners {
		v, ok := h.served[l]
		err, checked := ch.valid[l]
		addr, ok1 := ch.addrs[l]
		chains, ok2 := ch.chains[l]
		refs, ok3 := ch.refs[l]
		if ok && checked && err == nil && ok1 && ok2 && ok3 && chains == "" && memoizable(l) {
			p.listeners[k] = &memoEntry{key: k, name: l.GetName(), served: v, listener: true, addr: addr, refs: refs}
		}
	}
	for k, c := range g.own.clusters {
		v, ok := h.served[c]
		err, checked := ch.valid[c]
		if ok && checked && err == nil {
			p.clusters[k] = &memoEntry{key: k, name: c.GetName(), served: v}
		}
	}
	return p
}

// maxBuildErrors bounds the errors reported for one invalid mesh: a mistake
// shared by a thousand nodes is reported a few times, not a thousand.
const maxBuildErrors = 20

// buildSnapshots generates, validates and versions the resources of every
// workload of m. It fails, and nothing is served from it, when any node's
// resources fail validation (errors match ErrInvalidResources).
//
// Workloads of the same shape — everything the generator reads from a workload
// apart from its node id, labels and exact addresses, as for the replicas of
// one deployment — get the same resources, so they are generated, validated,
// hashed and marshalled once and share one snapshot.
func buildSnapshots(m *Mesh) (*build, error) { return buildFrom(m, nil) }

// buildFrom is buildSnapshots reusing what the previous build left (nil:
// none; see buildMemo).
func buildFrom(m *Mesh, prev *buildMemo) (*build, error) {
	start := time.Now()
	if err := m.Validate(); err != nil {
		return nil, err
	}
	g := newGenerator(m)
	ch := newChecker()
	h := newHasher()
	if prev != nil {
		g.prev = prev
		// Sized for what the last build kept: most of it comes back.
		g.next = newMemo(len(prev.listeners), len(prev.clusters))
		g.captures = make(map[captureKey]bool, len(prev.captures))
	}
	b := &build{nodes: make(map[string]*xds.Snapshot, len(m.Workloads)), start: start}
	shapes := make(map[string]*xds.Snapshot)
	failed := make(map[string]bool)
	var errs []error
	var (
		scratch ownResources // the generator's output, reused: the hasher copies what it keeps
		keyBuf  []byte
	)
	for i := range m.Workloads {
		w := &m.Workloads[i]
		cfg, cfgID := g.config(&w.TransparentProxy)
		key, part := shapeKey(w, cfgID, keyBuf[:0])
		keyBuf = key
		if ns, ok := shapes[string(key)]; ok {
			b.nodes[w.NodeID] = ns
			continue
		}
		if failed[string(key)] {
			continue
		}
		p, own := g.workload(w, cfg, key[:part], scratch)
		scratch = own
		if err := ch.checkNode(w.NodeID, p, own); err != nil {
			failed[string(key)] = true
			if len(errs) < maxBuildErrors {
				errs = append(errs, err)
			}
			continue
		}
		ns, err := h.snapshotOf(p, own)
		if err != nil {
			failed[string(key)] = true
			if len(errs) < maxBuildErrors {
				errs = append(errs, fmt.Errorf("node %q: %w", w.NodeID, err))
			}
			continue
		}
		shapes[string(key)] = ns
		b.nodes[w.NodeID] = ns
	}
	if len(errs) == 0 {
		if err := h.consistent(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	b.memo = newBuildMemo(g, ch, h)
	b.duration = time.Since(start)
	return b, nil
}

// shapeKey is everything (*generator).workload reads from w, appended to b;
// the mesh-wide inputs (services, endpoints, policy) are the same for every
// workload of a build. cfg is the number of w's redirect config in the build
// (generator.config): the key is short, and a key of each of 10,000
// distinct workloads does not hold a copy of its config's encoding. The
// key's first part bytes are the key of w's outbound part (outboundPart):
// the config, the families and the reach set, without the inbound ports.
func shapeKey(w *Workload, cfg int, b []byte) (key []byte, part int) {
	fam := families(w)
	b = strconv.AppendInt(b, int64(cfg), 10)
	for _, f := range [4]bool{fam.listen4, fam.listen6, fam.reach4, fam.reach6} {
		b = strconv.AppendBool(append(b, ' '), f)
	}
	reach := w.Reach
	if !slices.IsSorted(reach) {
		reach = slices.Sorted(slices.Values(reach))
	}
	for i, r := range reach {
		if i > 0 && reach[i-1] == r {
			continue
		}
		// Service names never contain NUL: \x01 and \x00 (below) cannot be
		// mistaken for a name's part.
		b = append(b, '\x01')
		b = append(b, r...)
	}
	part = len(b)
	inbound := w.Inbound
	byPort := func(a, b InboundPort) int { return cmp.Compare(a.Port, b.Port) }
	if !slices.IsSortedFunc(inbound, byPort) {
		inbound = slices.SortedFunc(slices.Values(inbound), byPort)
	}
	for _, p := range inbound {
		b = append(b, '\x00')
		b = strconv.AppendUint(b, uint64(p.Port), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(p.AppPort), 10)
		b = append(b, ' ')
		b = append(b, p.Protocol...)
	}
	return b, part
}

// hasher marshals and wraps each distinct resource once (xds.NewResource),
// and runs Snapshot.Consistent once over every distinct resource of the build.
type hasher struct {
	snapshots xds.SnapshotBuilder
	served    map[proto.Message]*xds.Resource
	listeners []types.Resource // every distinct listener with an HTTP connection manager, in first-seen order
	clusters  []types.Resource // every distinct cluster
	ls, cs    []*xds.Resource  // scratch: a node's served listeners and clusters
	// scratch: a node's own listeners and clusters, served, sorted by
	// name (ownL, ownC) and their served forms in that order (ownLs, ownCs).
	ownL, ownC   []namedResource
	ownLs, ownCs []*xds.Resource
	// parts are the served forms of each outbound part's resources, in
	// its order (snapshotOf).
	parts map[*outboundPart]*servedPart
}

// servedPart are the served forms of an outbound part's listeners and
// clusters, in its order, or why they could not be made.
type servedPart struct {
	listeners, clusters []*xds.Resource
	err                 error
}

func newHasher() *hasher {
	return &hasher{served: make(map[proto.Message]*xds.Resource), parts: make(map[*outboundPart]*servedPart)}
}

// marshal is deterministic, so equal resources hash equally.
var marshal = proto.MarshalOptions{Deterministic: true}

// serve returns the served form of m, marshalling it the first time.
func (h *hasher) serve(m proto.Message, typeURL string) (*xds.Resource, error) {
	if v, ok := h.served[m]; ok {
		return v, nil
	}
	name := cachev3.GetResourceName(m)
	b, err := marshal.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %s: %w", name, err)
	}
	v := xds.NewResource(name, typeURL, b)
	h.served[m] = v
	switch m := m.(type) {
	case *listenerv3.Listener:
		if hasHCM(m) {
			h.listeners = append(h.listeners, m)
		}
	case *clusterv3.Cluster:
		h.clusters = append(h.clusters, m)
	}
	return v, nil
}

// serveAll appends the served forms of resources to into, emptied first.
func serveAll[T proto.Message](h *hasher, typeURL string, resources []T, into []*xds.Resource) ([]*xds.Resource, error) {
	out := into[:0]
	for _, r := range resources {
		v, err := h.serve(r, typeURL)
		if err != nil {
			return out, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (h *hasher) snapshot(r Resources) (*xds.Snapshot, error) {
	// The snapshot keeps a node's own resources and shares the common
	// ones (xds.SnapshotBuilder): the lists are scratch, reused.
	var err error
	if h.ls, err = serveAll(h, resourcev3.ListenerType, r.Listeners, h.ls); err != nil {
		return nil, err
	}
	if h.cs, err = serveAll(h, resourcev3.ClusterType, r.Clusters, h.cs); err != nil {
		return nil, err
	}
	return h.snapshots.Snapshot(h.ls, h.cs)
}

// snapshotOf returns the snapshot of a node served p and its own resources
// own. p's resources are served once for every node that shares it; a
// node's lists are the merge of p's and its own, by name. Entries of the
// previous build's memo are not encoded again, nor checked for consistency
// again (a property of the resource alone).
func (h *hasher) snapshotOf(p *outboundPart, own ownResources) (*xds.Snapshot, error) {
	sp, ok := h.parts[p]
	if !ok {
		sp = &servedPart{}
		sp.listeners, sp.err = serveAll(h, resourcev3.ListenerType, p.Listeners, nil)
		if sp.err == nil {
			sp.clusters, sp.err = serveAll(h, resourcev3.ClusterType, p.Clusters, nil)
		}
		h.parts[p] = sp
	}
	if sp.err != nil {
		return nil, sp.err
	}
	h.ownL, h.ownC = h.ownL[:0], h.ownC[:0]
	for _, l := range own.Listeners {
		v, err := h.serve(l, resourcev3.ListenerType)
		if err != nil {
			return nil, err
		}
		h.ownL = append(h.ownL, namedResource{l.GetName(), v})
	}
	for _, c := range own.Clusters {
		v, err := h.serve(c, resourcev3.ClusterType)
		if err != nil {
			return nil, err
		}
		h.ownC = append(h.ownC, namedResource{c.GetName(), v})
	}
	for _, e := range own.memo {
		if e.listener {
			h.ownL = append(h.ownL, namedResource{e.name, e.served})
		} else {
			h.ownC = append(h.ownC, namedResource{e.name, e.served})
		}
	}
	h.ownLs, h.ownCs = sortedServed(h.ownL, h.ownLs), sortedServed(h.ownC, h.ownCs)
	h.ls = merge(p.Listeners, sp.listeners, h.ownL, h.ownLs, h.ls[:0])
	h.cs = merge(p.Clusters, sp.clusters, h.ownC, h.ownCs, h.cs[:0])
	return h.snapshots.Snapshot(h.ls, h.cs)
}

// namedResource is a served resource and its name.
type namedResource struct {
	name   string
	served *xds.Resource
}

func (r namedResource) GetName() string { return r.name }

// sortedServed sorts a node's own resources by name (a handful: its inbound
// listeners, local app and passthrough clusters) and appends their served
// forms in that order to into, emptied first.
func sortedServed(own []namedResource, into []*xds.Resource) []*xds.Resource {
	slices.SortFunc(own, func(a, b namedResource) int { return cmp.Compare(a.name, b.name) })
	into = into[:0]
	for _, r := range own {
		into = append(into, r.served)
	}
	return into
}

// hcmName is the message an HTTP connection manager filter's typed config holds.
var hcmName = (&hcmv3.HttpConnectionManager{}).ProtoReflect().Descriptor().FullName()

// hasHCM reports whether l has a filter whose typed config is an HTTP
// connection manager: the only filters Snapshot.Consistent reads references
// (RDS route names) from. It unpacks every filter's typed config as one, and
// a thousand workloads' inbound listeners hold thousands of TCP proxy
// filters: passing it only listeners with an HCM saves that garbage and gives
// the same answer.
func hasHCM(l *listenerv3.Listener) bool {
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(slices.Clip(chains), d)
	}
	for _, c := range chains {
		for _, f := range c.GetFilters() {
			if f.GetTypedConfig().MessageName() == hcmName {
				return true
			}
		}
	}
	return false
}

// consistent runs go-control-plane's Snapshot.Consistent over every distinct
// resource of the build at once. Our snapshots hold no endpoints (EDS) and no
// routes (RDS), so Consistent demands that no resource refers to any: a
// property of each resource alone, so one check of the union stands for the
// check of every node's snapshot, and it unpacks each HTTP connection manager
// once instead of once per node. The union is keyed by position: names repeat
// across nodes (every node has an "inbound" listener).
func (h *hasher) consistent() error {
	full := &cachev3.Snapshot{}
	for _, group := range []struct {
		typ       types.ResponseType
		resources []types.Resource
	}{{types.Listener, h.listeners}, {types.Cluster, h.clusters}} {
		items := make(map[string]types.ResourceWithTTL, len(group.resources))
		for i, r := range group.resources {
			items[strconv.Itoa(i)] = types.ResourceWithTTL{Resource: r}
		}
		full.Resources[group.typ] = cachev3.Resources{Items: items}
	}
	if err := full.Consistent(); err != nil {
		return fmt.Errorf("snapshots are not consistent: %w", err)
	}
	return nil
}
