package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dnsv3 "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	dnsfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"

	// Typed configs are unpacked by type URL during validation; these register
	// the extensions the generator uses.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
)

// ErrInvalidResources matches every error about generated Envoy resources that
// failed validation; such a snapshot is never served.
var ErrInvalidResources = errors.New("invalid envoy resources")

// ResourceError names the resource and the field path inside it that failed.
type ResourceError struct {
	Node     string // node id, empty for checks of a single resource
	Resource string // "listener outbound", "cluster passthrough"
	Path     string // field path inside the resource, may be empty
	Reason   string
}

func (e *ResourceError) Error() string {
	var b strings.Builder
	if e.Node != "" {
		b.WriteString("node " + strconv.Quote(e.Node) + ": ")
	}
	b.WriteString(e.Resource)
	if e.Path != "" {
		b.WriteString(": " + e.Path)
	}
	b.WriteString(": " + e.Reason)
	return b.String()
}

// Is makes every ResourceError match ErrInvalidResources.
func (e *ResourceError) Is(target error) bool { return target == ErrInvalidResources }

// ValidateResource checks one resource deeply: protoc-gen-validate's
// ValidateAll on the resource and on every typed config inside it (each Any is
// unpacked, recursively), and no deprecated field or enum value anywhere.
// Validate on a resource alone does not look inside typed_config; Envoy does.
func ValidateResource(m proto.Message) error {
	w := &walker{}
	return w.message(m)
}

type allValidator interface{ ValidateAll() error }

// walker visits every populated field of a message tree. It keeps the path as
// a stack of segments and renders it only for an error: a thousand nodes'
// resources are walked on every config change.
type walker struct {
	path []segment
	// valid, when set, holds the parts the generator shares between
	// resources (typed configs, filter chains, filters, listener filters;
	// by pointer) whose contents were found valid: unpacking each typed
	// config again for every resource that holds it was most of a build's
	// garbage, and each distinct workload's inbound listener holds the
	// build's shared chains. Failures are not kept, so that each resource's
	// error names its own path.
	valid map[proto.Message]bool
	// unpacked, when set, is given every typed config found valid with the
	// message it holds (the checker reads cluster references from it rather
	// than unpacking it a second time).
	unpacked func(packed *anypb.Any, inner proto.Message)
}

// shared reports whether m is of a kind the generator shares between
// resources: worth remembering as valid.
func shared(m proto.Message) bool {
	switch m.(type) {
	case *anypb.Any, *listenerv3.FilterChain, *listenerv3.Filter, *listenerv3.ListenerFilter:
		return true
	}
	return false
}

// segment is one step of a field path: a field name, a list index or map key,
// or the type a typed config unpacked to.
type segment struct {
	name                     string // field name, or unpacked type name when unpacked is set
	index                    int    // list index, when isIndex
	key                      any    // map key, when isKey
	isIndex, isKey, unpacked bool
}

func (w *walker) pathString() string {
	var b strings.Builder
	for _, s := range w.path {
		switch {
		case s.isIndex:
			b.WriteString("[" + strconv.Itoa(s.index) + "]")
		case s.isKey:
			fmt.Fprintf(&b, "[%v]", s.key)
		case s.unpacked:
			b.WriteString("(" + s.name + ")")
		default:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s.name)
		}
	}
	return b.String()
}

func (w *walker) errorf(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if p := w.pathString(); p != "" {
		return errors.New(p + ": " + msg)
	}
	return errors.New(msg)
}

func (w *walker) message(m proto.Message) error {
	if v, ok := m.(allValidator); ok {
		if err := v.ValidateAll(); err != nil {
			return w.errorf("%s", err)
		}
	}
	return w.walk(m.ProtoReflect())
}

func (w *walker) walk(m protoreflect.Message) error {
	msg := m.Interface()
	memo := w.valid != nil && shared(msg)
	if memo && w.valid[msg] {
		return nil
	}
	err := w.fields(m)
	if err == nil && memo {
		w.valid[msg] = true
	}
	return err
}

// fields walks m's populated fields, or the message a typed config holds.
func (w *walker) fields(m protoreflect.Message) error {
	if packed, ok := m.Interface().(*anypb.Any); ok {
		inner, err := anypb.UnmarshalNew(packed, proto.UnmarshalOptions{Resolver: protoregistry.GlobalTypes})
		if err != nil {
			return w.errorf("unpack %s: %v", packed.GetTypeUrl(), err)
		}
		w.path = append(w.path, segment{name: string(inner.ProtoReflect().Descriptor().FullName()), unpacked: true})
		err = w.message(inner)
		w.path = w.path[:len(w.path)-1]
		if err == nil && w.unpacked != nil {
			w.unpacked(packed, inner)
		}
		return err
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		w.path = append(w.path, segment{name: string(fd.Name())})
		defer func() { w.path = w.path[:len(w.path)-1] }()
		if opts, ok := fd.Options().(*descriptorpb.FieldOptions); ok && opts.GetDeprecated() {
			err = w.errorf("is deprecated")
			return false
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				w.path = append(w.path, segment{index: i, isIndex: true})
				err = w.value(fd, l.Get(i))
				w.path = w.path[:len(w.path)-1]
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				w.path = append(w.path, segment{key: k.Interface(), isKey: true})
				err = w.value(fd.MapValue(), mv)
				w.path = w.path[:len(w.path)-1]
				return err == nil
			})
		default:
			err = w.value(fd, v)
		}
		return err == nil
	})
	return err
}

func (w *walker) value(fd protoreflect.FieldDescriptor, v protoreflect.Value) error {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return w.walk(v.Message())
	case protoreflect.EnumKind:
		ev := fd.Enum().Values().ByNumber(v.Enum())
		if ev == nil {
			return w.errorf("enum value %d is not defined", v.Enum())
		}
		if opts, ok := ev.Options().(*descriptorpb.EnumValueOptions); ok && opts.GetDeprecated() {
			return w.errorf("enum value %s is deprecated", ev.Name())
		}
	}
	return nil
}

// checker validates the resources of every node of one build. Each distinct
// resource (by pointer: the generator shares them between nodes) is validated
// and scanned for cluster references once, and each outbound part
// (outboundPart) is checked once for every node served it.
type checker struct {
	node group // scratch: a node's own resources

	valid  map[proto.Message]error
	walker walker // with a memo of valid shared parts
	refs   map[*listenerv3.Listener][]string
	// filterRefs are the clusters each filter refers to (the generator
	// shares filters between listeners).
	filterRefs map[*listenerv3.Filter][]string
	// configRefs are the references of each typed config validation
	// unpacked, read then.
	configRefs map[*anypb.Any]configRefs
	chains     map[*listenerv3.Listener]string
	matches    map[*listenerv3.FilterChain][]byte // encoded filter chain matches
	addrs      map[*listenerv3.Listener]string
	// parts are what the checker found of each outbound part.
	parts map[*outboundPart]*group
}

// group is what the checker found of resources checked together: a node's
// own resources, or an outbound part that many nodes are served with their
// own.
type group struct {
	clusters, listeners map[string]bool   // names
	addrs               map[string]string // listener address → its listener's name
	// vips are the addresses of the listeners that do not bind (service
	// listeners): the addresses a DNS table may answer with.
	vips map[string]bool
	errs []error // ResourceErrors without a node
	// refs and answers are a part's failures that a node's own resources
	// may resolve: a reference to a cluster the part does not hold (key:
	// the cluster's name), a DNS answer no listener of the part serves
	// (key: the address).
	refs, answers []pending
}

// pending is a failure of a part unless the resources it is served with
// hold key.
type pending struct {
	key string
	err error
}

func newChecker() *checker {
	c := &checker{
		node: group{
			clusters:  make(map[string]bool),
			listeners: make(map[string]bool),
			addrs:     make(map[string]string),
			vips:      make(map[string]bool),
		},
		valid:      make(map[proto.Message]error),
		walker:     walker{valid: make(map[proto.Message]bool)},
		refs:       make(map[*listenerv3.Listener][]string),
		filterRefs: make(map[*listenerv3.Filter][]string),
		configRefs: make(map[*anypb.Any]configRefs),
		chains:     make(map[*listenerv3.Listener]string),
		matches:    make(map[*listenerv3.FilterChain][]byte),
		addrs:      make(map[*listenerv3.Listener]string),
		parts:      make(map[*outboundPart]*group),
	}
	c.walker.unpacked = func(packed *anypb.Any, inner proto.Message) { c.configRefs[packed] = refsOf(inner) }
	return c
}

func (c *checker) validate(m proto.Message, kind, name string) error {
	err, seen := c.valid[m]
	if !seen {
		c.walker.path = c.walker.path[:0]
		if verr := c.walker.message(m); verr != nil {
			err = &ResourceError{Resource: kind + " " + name, Reason: verr.Error()}
		}
		c.valid[m] = err
	}
	return err
}

// check runs the deep validation of every resource and the cross-resource
// checks of our own for one node: unique listener names and addresses, unique
// filter chain matches and names in each listener, every referenced cluster
// present, no EDS or RDS (the proxy is never served them), and ORIGINAL_DST
// clusters (and only they) with the CLUSTER_PROVIDED load balancer.
func (c *checker) check(node string, r Resources) error {
	return c.checkNode(node, nil, ownResources{Resources: r})
}

// checkNode is check of a node served the outbound part p (nil: none) and
// its own resources own: p is checked once for every node served it, and a
// node's own resources against it (names, addresses, references and DNS
// answers across the two), as if the node's resources were checked together.
// An entry of the previous build's memo passed the checks of the resource
// alone: it is checked against the others by what the entry records.
func (c *checker) checkNode(node string, p *outboundPart, own ownResources) error {
	var base *group
	if p != nil {
		base = c.part(p)
	}
	g := &c.node
	clear(g.clusters)
	clear(g.listeners)
	clear(g.addrs)
	clear(g.vips)
	g.errs = g.errs[:0]
	c.scan(g, base, own, false)
	var errs []error
	if base != nil {
		for _, err := range base.errs {
			errs = append(errs, withNode(node, err))
		}
	}
	for _, err := range g.errs {
		errs = append(errs, withNode(node, err))
	}
	return errors.Join(errs...)
}

// part returns what the checker found of p, checked the first time.
func (c *checker) part(p *outboundPart) *group {
	if g, ok := c.parts[p]; ok {
		return g
	}
	g := &group{
		clusters:  make(map[string]bool, len(p.Clusters)),
		listeners: make(map[string]bool, len(p.Listeners)),
		addrs:     make(map[string]string, len(p.Listeners)),
		vips:      make(map[string]bool, len(p.Listeners)),
	}
	c.scan(g, nil, ownResources{Resources: p.Resources}, true)
	c.parts[p] = g
	return g
}

// scan checks the resources r into g (empty), whose names and addresses must
// not clash with those of base (nil: none), the part r is served with. A
// node's own resources (part false) fail a reference to a cluster, or a DNS
// answer, that neither they nor base hold, and base's pending ones that they
// do not resolve. A part's are kept pending in g.
func (c *checker) scan(g, base *group, r ownResources, part bool) {
	fail := func(kind, name, path, reason string) {
		g.errs = append(g.errs, &ResourceError{Resource: kind + " " + name, Path: path, Reason: reason})
	}
	hasCluster := func(name string) bool { return g.clusters[name] || base != nil && base.clusters[name] }
	for _, cl := range r.Clusters {
		if err := c.validate(cl, "cluster", cl.GetName()); err != nil {
			g.errs = append(g.errs, err)
		}
		if hasCluster(cl.GetName()) {
			fail("cluster", cl.GetName(), "name", "is duplicated")
		}
		g.clusters[cl.GetName()] = true
		typ := cl.GetType()
		switch {
		case cl.GetClusterType() != nil:
			fail("cluster", cl.GetName(), "cluster_type", "custom cluster types are not served")
		case typ == clusterv3.Cluster_EDS:
			fail("cluster", cl.GetName(), "type", "is EDS, but this control plane serves no endpoints (inline load_assignment)")
		case typ == clusterv3.Cluster_ORIGINAL_DST && cl.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED:
			fail("cluster", cl.GetName(), "lb_policy", cl.GetLbPolicy().String()+" on an ORIGINAL_DST cluster; it needs CLUSTER_PROVIDED")
		case typ != clusterv3.Cluster_ORIGINAL_DST && cl.GetLbPolicy() == clusterv3.Cluster_CLUSTER_PROVIDED:
			fail("cluster", cl.GetName(), "lb_policy", "CLUSTER_PROVIDED on a "+typ.String()+" cluster; only ORIGINAL_DST provides one")
		case typ == clusterv3.Cluster_ORIGINAL_DST && cl.GetLoadAssignment() != nil:
			fail("cluster", cl.GetName(), "load_assignment", "is set on an ORIGINAL_DST cluster")
		}
	}
	for _, e := range r.memo {
		if !e.listener {
			if hasCluster(e.name) {
				fail("cluster", e.name, "name", "is duplicated")
			}
			g.clusters[e.name] = true
		}
	}
	// refs fails, or keeps pending, the references of listener name to
	// clusters that neither r nor base hold.
	refs := func(name string, refs []string) {
		for _, ref := range refs {
			if hasCluster(ref) {
				continue
			}
			err := &ResourceError{Resource: "listener " + name, Reason: "references cluster " + strconv.Quote(ref) + ", which the snapshot does not hold"}
			if part {
				// The node's own resources may hold it.
				g.refs = append(g.refs, pending{ref, err})
			} else {
				g.errs = append(g.errs, err)
			}
		}
	}
	// address records a listener's address, or fails it when another
	// listener has it.
	address := func(name, addr string) {
		other, dup := g.addrs[addr]
		if !dup && base != nil {
			other, dup = base.addrs[addr]
		}
		if dup {
			fail("listener", name, "address", addr+" is also the address of listener "+other)
		}
		g.addrs[addr] = name
	}
	uniqueName := func(name string) {
		if g.listeners[name] || base != nil && base.listeners[name] {
			fail("listener", name, "name", "is duplicated")
		}
		g.listeners[name] = true
	}

	var udpListeners []*listenerv3.Listener
	for _, l := range r.Listeners {
		if err := c.validate(l, "listener", l.GetName()); err != nil {
			g.errs = append(g.errs, err)
			continue
		}
		uniqueName(l.GetName())
		addr, ok := c.addrs[l]
		if !ok {
			addr = listenerAddress(l.GetAddress())
			c.addrs[l] = addr
		}
		address(l.GetName(), addr)
		if l.GetUseOriginalDst().GetValue() && l.GetBindToPort() != nil && !l.GetBindToPort().GetValue() {
			fail("listener", l.GetName(), "use_original_dst", "is set on a listener that does not bind; nothing would reach it")
		}
		reason, seen := c.chains[l]
		if !seen {
			reason = c.checkChains(l)
			c.chains[l] = reason
		}
		if err := reason; err != "" {
			fail("listener", l.GetName(), "filter_chains", err)
		}
		if l.GetAddress().GetSocketAddress().GetProtocol() == corev3.SocketAddress_UDP {
			udpListeners = append(udpListeners, l)
		}
		lrefs, err := c.clusterRefs(l)
		if err != nil {
			fail("listener", l.GetName(), "", err.Error())
			continue
		}
		refs(l.GetName(), lrefs)
	}
	// An entry of the memo passed the checks of the listener alone, binds
	// and is not UDP (memoizable).
	for _, e := range r.memo {
		if e.listener {
			uniqueName(e.name)
			address(e.name, e.addr)
			refs(e.name, e.refs)
		}
	}
	// A DNS listener answers service names with virtual IPs the proxy has
	// listeners for: an answer nothing serves would send the app nowhere.
	if part || len(udpListeners) > 0 || base != nil && len(base.answers) > 0 {
		for _, l := range r.Listeners {
			if l.GetBindToPort() != nil && !l.GetBindToPort().GetValue() {
				g.vips[l.GetAddress().GetSocketAddress().GetAddress()] = true
			}
		}
	}
	for _, l := range udpListeners {
		if len(l.GetFilterChains()) > 0 || l.GetDefaultFilterChain() != nil {
			fail("listener", l.GetName(), "filter_chains", "is set on a UDP listener; its only filter is the listener filter "+filterDNS)
		}
		table, err := dnsTable(l)
		if err != nil {
			fail("listener", l.GetName(), "listener_filters", err.Error())
			continue
		}
		for i, vd := range table.GetVirtualDomains() {
			for j, a := range vd.GetEndpoint().GetAddressList().GetAddress() {
				if g.vips[a] || base != nil && base.vips[a] {
					continue
				}
				err := &ResourceError{
					Resource: "listener " + l.GetName(),
					Path:     fmt.Sprintf("inline_dns_table.virtual_domains[%d].endpoint.address_list.address[%d]", i, j),
					Reason:   fmt.Sprintf("answers %s with %s, the address of no service listener of the snapshot", vd.GetName(), a),
				}
				if part {
					g.answers = append(g.answers, pending{a, err})
				} else {
					g.errs = append(g.errs, err)
				}
			}
		}
	}
	if base == nil {
		return
	}
	// What the part left pending, the node's own resources must resolve.
	for _, p := range base.refs {
		if !g.clusters[p.key] {
			g.errs = append(g.errs, p.err)
		}
	}
	for _, p := range base.answers {
		if !g.vips[p.key] {
			g.errs = append(g.errs, p.err)
		}
	}
}

// dnsTable returns the inline table of a DNS listener's dns_filter.
func dnsTable(l *listenerv3.Listener) (*dnsv3.DnsTable, error) {
	for _, f := range l.GetListenerFilters() {
		if f.GetName() != filterDNS {
			continue
		}
		cfg := &dnsfilterv3.DnsFilterConfig{}
		if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
			return nil, fmt.Errorf("unpack %s: %w", filterDNS, err)
		}
		return cfg.GetServerConfig().GetInlineDnsTable(), nil
	}
	return nil, errors.New("a UDP listener without " + filterDNS + " is not served")
}

func withNode(node string, err error) error {
	var re *ResourceError
	if errors.As(err, &re) {
		c := *re
		c.Node = node
		return &c
	}
	return err
}

func listenerAddress(a *corev3.Address) string {
	sa := a.GetSocketAddress()
	if sa == nil {
		return a.String()
	}
	return sa.GetProtocol().String() + " " + sa.GetAddress() + " " + strconv.FormatUint(uint64(sa.GetPortValue()), 10)
}

// checkChains returns why l's filter chains are ambiguous, or "".
func (c *checker) checkChains(l *listenerv3.Listener) string {
	chains := l.GetFilterChains()
	for i, fc := range chains {
		if fc.GetName() == "" {
			continue
		}
		for j := range i {
			if chains[j].GetName() == fc.GetName() {
				return fmt.Sprintf("[%d] name %q is duplicated", i, fc.GetName())
			}
		}
	}
	for i, fc := range chains {
		b, err := c.chainMatch(fc)
		if err != nil {
			return fmt.Sprintf("[%d] filter_chain_match: %v", i, err)
		}
		for j := range i {
			if other, _ := c.chainMatch(chains[j]); bytes.Equal(b, other) {
				return fmt.Sprintf("[%d] has the same filter_chain_match as [%d]", i, j)
			}
		}
	}
	return ""
}

// chainMatch returns the deterministic encoding of fc's match (empty for
// none), once per chain: the generator shares chains between listeners.
func (c *checker) chainMatch(fc *listenerv3.FilterChain) ([]byte, error) {
	if b, ok := c.matches[fc]; ok {
		return b, nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(fc.GetFilterChainMatch())
	if err != nil {
		return nil, err
	}
	c.matches[fc] = b
	return b, nil
}

// clusterRefs returns the clusters a listener's filters send to.
func (c *checker) clusterRefs(l *listenerv3.Listener) ([]string, error) {
	if refs, ok := c.refs[l]; ok {
		return refs, nil
	}
	var refs []string
	chains := l.GetFilterChains()
	if l.GetDefaultFilterChain() != nil {
		chains = append(slices.Clip(chains), l.GetDefaultFilterChain())
	}
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			fr, err := c.filterClusters(f)
			if err != nil {
				return nil, err
			}
			refs = append(refs, fr...)
		}
	}
	slices.Sort(refs)
	refs = slices.Compact(refs)
	c.refs[l] = refs
	return refs, nil
}

// filterClusters returns the clusters the network filter f refers to.
func (c *checker) filterClusters(f *listenerv3.Filter) ([]string, error) {
	if refs, ok := c.filterRefs[f]; ok {
		return refs, nil
	}
	tc := f.GetTypedConfig()
	if tc == nil {
		return nil, fmt.Errorf("filter %s has no typed_config", f.GetName())
	}
	refs, ok := c.configRefs[tc]
	if !ok {
		msg, err := tc.UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("filter %s: unpack: %w", f.GetName(), err)
		}
		refs = refsOf(msg)
	}
	if refs.rds {
		return nil, fmt.Errorf("filter %s uses RDS, but this control plane serves routes inline only", f.GetName())
	}
	c.filterRefs[f] = refs.clusters
	return refs.clusters, nil
}

// configRefs are what a network filter's typed config refers to.
type configRefs struct {
	clusters []string
	rds      bool // routes by RDS or scoped routes, which are not served
}

// refsOf returns the references of a network filter's config: the clusters
// of a TCP proxy or of an HTTP connection manager's inline routes.
func refsOf(msg proto.Message) configRefs {
	var r configRefs
	switch t := msg.(type) {
	case *tcpproxyv3.TcpProxy:
		if name := t.GetCluster(); name != "" {
			r.clusters = append(r.clusters, name)
		}
		for _, wc := range t.GetWeightedClusters().GetClusters() {
			r.clusters = append(r.clusters, wc.GetName())
		}
	case *hcmv3.HttpConnectionManager:
		r.rds = t.GetRds() != nil || t.GetScopedRoutes() != nil
		r.clusters = routeClusters(t.GetRouteConfig())
	}
	return r
}

func routeClusters(rc *routev3.RouteConfiguration) []string {
	var out []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			a := r.GetRoute()
			if a == nil {
				continue
			}
			if n := a.GetCluster(); n != "" {
				out = append(out, n)
			}
			for _, wc := range a.GetWeightedClusters().GetClusters() {
				out = append(out, wc.GetName())
			}
		}
	}
	return out
}
