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

// buildMemo is what a build leaves for the next one: the resources its
// generator made from values alone (keyedResources: the outbound and inbound
// listeners, the passthrough, blackhole and local app clusters), each with its
// served form and what validation found of it. A workload the change left
// alone gets the same resources again, and the next build neither generates,
// validates nor encodes them again: a change of one service no longer
// rebuilds every workload's own inbound listener and cluster (20,000 of them
// at 10,000 distinct workloads, most of a build's garbage and time).
//
// The memo keeps no generated resource: each is replaced by a token, a
// message of its type holding nothing but its name, which the next build's
// generator hands out in its place. Everything a build reads of a reused
// resource — its name from the token; its served form, address, filter
// chain verdict and cluster references from the memo — is recorded here,
// and the checks that read anything else (checker.check) are properties of
// the resource alone, which it passed. Kept whole, the protos were about
// 2 KiB per distinct workload (20 MiB at 10,000) for nothing the next build
// reads. Only a listener that binds its address and is not UDP has a token:
// the checker reads the others' addresses for the DNS table's checks.
type buildMemo struct {
	keyed     keyedResources // of tokens
	served    map[proto.Message]*xds.Resource
	listeners map[*listenerv3.Listener]listenerFacts
}

// listenerFacts are what the checker found of a valid listener.
type listenerFacts struct {
	addr, chains string
	refs         []string
}

// valid reports whether m is one of the memo's resources (a token): the
// build that left it found the resource valid.
func (p *buildMemo) valid(m proto.Message) bool {
	if p == nil {
		return false
	}
	_, ok := p.served[m]
	return ok
}

// listener returns what the memo's build found of the listener l stands
// for, if l is one of its tokens.
func (p *buildMemo) listener(l *listenerv3.Listener) (listenerFacts, bool) {
	if p == nil {
		return listenerFacts{}, false
	}
	f, ok := p.listeners[l]
	return f, ok
}

// tokenizable reports whether the checker reads nothing of l but what the
// memo records: it binds its address (listeners that do not are the service
// listeners a DNS table's answers are checked against) and is not UDP (DNS
// listeners, whose tables are read).
func tokenizable(l *listenerv3.Listener) bool {
	if b := l.GetBindToPort(); b != nil && !b.GetValue() {
		return false
	}
	return l.GetAddress().GetSocketAddress().GetProtocol() != corev3.SocketAddress_UDP
}

// newBuildMemo returns what this build leaves for the next: the keyed
// resources it served, as tokens, with their facts, whether it made them or
// reused them from prev. Called once every node passed.
func newBuildMemo(g *generator, ch *checker, h *hasher, prev *buildMemo) *buildMemo {
	p := &buildMemo{
		keyed: keyedResources{
			listeners: make(map[string]*listenerv3.Listener, len(g.listeners)),
			clusters:  make(map[string]*clusterv3.Cluster, len(g.clusters)),
			captures:  g.captures,
		},
		served:    make(map[proto.Message]*xds.Resource, len(g.listeners)+len(g.clusters)),
		listeners: make(map[*listenerv3.Listener]listenerFacts, len(g.listeners)),
	}
	// served returns the served form of r: a token of prev's is valid and
	// served; a resource of this build must have passed validation.
	served := func(r proto.Message) (v *xds.Resource, reused, ok bool) {
		if v, ok := prev.servedOf(r); ok {
			return v, true, true
		}
		err, checked := ch.valid[r]
		v, ok = h.served[r]
		return v, false, ok && checked && err == nil
	}
	for k, l := range g.listeners {
		v, reused, ok := served(l)
		if !ok {
			continue
		}
		f, ok := prev.listener(l)
		if !reused {
			var ok1, ok2, ok3 bool
			f.addr, ok1 = ch.addrs[l]
			f.chains, ok2 = ch.chains[l]
			f.refs, ok3 = ch.refs[l]
			ok = ok1 && ok2 && ok3 && f.chains == "" && tokenizable(l)
			l = &listenerv3.Listener{Name: l.GetName()}
		}
		if !ok {
			continue
		}
		p.keyed.listeners[k] = l
		p.served[l] = v
		p.listeners[l] = f
	}
	for k, c := range g.clusters {
		v, reused, ok := served(c)
		if !ok {
			continue
		}
		if !reused {
			c = &clusterv3.Cluster{Name: c.GetName()}
		}
		p.keyed.clusters[k] = c
		p.served[c] = v
	}
	return p
}

// servedOf returns the served form of r, one of the memo's resources.
func (p *buildMemo) servedOf(r proto.Message) (*xds.Resource, bool) {
	if p == nil {
		return nil, false
	}
	v, ok := p.served[r]
	return v, ok
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
		g.prev, ch.prev, h.prev = &prev.keyed, prev, prev
		// Sized for what the last build kept: most of it comes back.
		g.listeners = make(map[string]*listenerv3.Listener, len(prev.keyed.listeners))
		g.clusters = make(map[string]*clusterv3.Cluster, len(prev.keyed.clusters))
		g.captures = make(map[captureKey]bool, len(prev.keyed.captures))
	}
	b := &build{nodes: make(map[string]*xds.Snapshot, len(m.Workloads)), start: start}
	shapes := make(map[string]*xds.Snapshot)
	failed := make(map[string]bool)
	var errs []error
	var (
		scratch Resources // the generator's output, reused: the hasher copies what it keeps
		keyBuf  []byte
	)
	for i := range m.Workloads {
		w := &m.Workloads[i]
		cfg, cfgID, err := g.config(&w.TransparentProxy)
		if err != nil {
			return nil, fmt.Errorf("node %q: %w", w.NodeID, err)
		}
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
	b.memo = newBuildMemo(g, ch, h, prev)
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
	prev      *buildMemo // what the previous build served, reused
	snapshots xds.SnapshotBuilder
	served    map[proto.Message]*xds.Resource
	listeners []types.Resource // every distinct listener with an HTTP connection manager, in first-seen order
	clusters  []types.Resource // every distinct cluster
	ls, cs    []*xds.Resource  // scratch: a node's served listeners and clusters
	ownLs     []*xds.Resource  // scratch: the served forms of a node's own listeners
	ownCs     []*xds.Resource  // and clusters
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
	if v, ok := h.prev.servedOf(m); ok {
		// Of the previous build: not encoded again, and not checked for
		// consistency again (a property of the resource alone).
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
// own (each sorted by name, as the generator makes them). p's resources
// are served once for every node that shares it; a node's lists are the
// merge of p's and its own.
func (h *hasher) snapshotOf(p *outboundPart, own Resources) (*xds.Snapshot, error) {
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
	var err error
	if h.ownLs, err = serveAll(h, resourcev3.ListenerType, own.Listeners, h.ownLs); err != nil {
		return nil, err
	}
	if h.ownCs, err = serveAll(h, resourcev3.ClusterType, own.Clusters, h.ownCs); err != nil {
		return nil, err
	}
	h.ls = merge(p.Listeners, sp.listeners, own.Listeners, h.ownLs, h.ls[:0])
	h.cs = merge(p.Clusters, sp.clusters, own.Clusters, h.ownCs, h.cs[:0])
	return h.snapshots.Snapshot(h.ls, h.cs)
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
