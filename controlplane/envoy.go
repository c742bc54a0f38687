package controlplane

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dnsv3 "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	dnsfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	caresv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/network/dns_resolver/cares/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"

	"github.com/detour-mesh/detour/redirect"
)

// Names of the resources every proxy receives. docs/control-plane.md lists the
// whole layout.
const (
	ListenerOutbound     = "outbound"      // 0.0.0.0:outboundPort, use_original_dst
	ListenerOutboundIPv6 = "outbound-ipv6" // [::]:outboundPort
	ListenerInbound      = "inbound"       // 0.0.0.0:inboundPort, original_dst listener filter
	ListenerInboundIPv6  = "inbound-ipv6"  // [::]:inboundPort
	ListenerDNS          = "dns"           // UDP 127.0.0.1:dns.port, dns_filter
	ListenerDNSIPv6      = "dns-ipv6"      // UDP [::1]:dns.port

	ClusterPassthrough            = "passthrough"              // ORIGINAL_DST: the destination the app dialed
	ClusterBlackhole              = "blackhole"                // STATIC without endpoints: refuses
	ClusterInboundPassthroughIPv4 = "inbound-passthrough-ipv4" // ORIGINAL_DST from 127.0.0.6
	ClusterInboundPassthroughIPv6 = "inbound-passthrough-ipv6" // ORIGINAL_DST from ::6

	// Filter chain names, shared by the listeners.
	ChainLoopGuard   = "loop-guard"
	ChainPassthrough = "passthrough"
)

// Extension names Envoy knows the typed configs under.
const (
	filterTCPProxy    = "envoy.filters.network.tcp_proxy"
	filterHCM         = "envoy.filters.network.http_connection_manager"
	filterRouter      = "envoy.filters.http.router"
	filterOriginalDst = "envoy.filters.listener.original_dst"
	filterOriginalSrc = "envoy.filters.listener.original_src"
	filterDNS         = "envoy.filters.udp.dns_filter"
	dnsResolverCares  = "envoy.network.dns_resolver.cares"
)

// DNSAnswerTTL is the TTL of the answers for service names: short, so a
// changed virtual IP is picked up soon.
const DNSAnswerTTL = 30 * time.Second

const connectTimeout = 5 * time.Second

// ServiceClusterName names the cluster of one service port.
func ServiceClusterName(service string, port uint16) string {
	return "outbound|" + strconv.Itoa(int(port)) + "|" + service
}

// InboundClusterName names the cluster of the local app behind inbound port.
func InboundClusterName(port uint16) string {
	return "inbound|" + strconv.Itoa(int(port))
}

// ServiceListenerName names the bind_to_port: false listener of a virtual IP
// and port: "198.51.100.10:80", "[2001:db8::10]:80".
func ServiceListenerName(vip netip.Addr, port uint16) string {
	return netip.AddrPortFrom(vip, port).String()
}

// Resources are the Envoy resources one proxy receives, sorted by name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
}

// Resources returns the Envoy resources for the workload with nodeID, checked
// like a served snapshot. m must be valid (Validate).
func (m *Mesh) Resources(nodeID string) (Resources, error) {
	w, ok := m.workload(nodeID)
	if !ok {
		return Resources{}, fmt.Errorf("node %q: %w", nodeID, ErrUnknownNode)
	}
	g := newGenerator(m)
	cfg, id := g.config(&w.TransparentProxy)
	key, part := shapeKey(w, id, nil)
	p, own := g.workload(w, cfg, key[:part], ownResources{})
	r := p.with(own.Resources, Resources{}) // no memo: own.memo is empty
	if err := newChecker().check(nodeID, r); err != nil {
		return Resources{}, err
	}
	return r, nil
}

// generator builds the resources of every workload of one mesh. Resources that
// do not depend on the workload (a service's listener and cluster, the
// passthrough and blackhole clusters) are built once and shared by every
// snapshot: they are never modified after they are built, and sharing them keeps
// a thousand proxies' snapshots small and lets validation and hashing visit each
// distinct resource once.
type generator struct {
	mesh      *Mesh
	services  map[string]*Service
	endpoints map[string][]endpointAddr // service name → its endpoints, selected workloads included
	// Resources made from values alone, by a key of those values: the
	// outbound listeners and the passthrough and blackhole clusters
	// (listeners, clusters) and a workload's own (own: its inbound
	// listeners, local app and inbound passthrough clusters; see prev).
	listeners map[string]*listenerv3.Listener
	clusters  map[string]*clusterv3.Cluster
	own       struct {
		listeners map[string]*listenerv3.Listener
		clusters  map[string]*clusterv3.Cluster
	}
	// Shared per-service resources, keyed without building strings: a
	// thousand workloads look them up a hundred times each.
	serviceListeners map[serviceKey]*listenerv3.Listener
	serviceClusters  map[serviceKey]*clusterv3.Cluster
	reach            map[string][]*Service // sorted Reach → reachable services
	used             map[string]*clusterv3.Cluster
	// parts are the outbound parts of the build's workloads, by their key
	// (the part of shapeKey's key it names).
	parts        map[string]*outboundPart
	dnsListeners map[string]*listenerv3.Listener // by dnsKey
	// The parts of inbound listeners that repeat across workloads: every
	// workload has its own inbound listeners (its ports), but their filter
	// chains and listener filters are the same for every workload that
	// declares the same port, and a thousand workloads would each build,
	// validate and scan them again.
	inboundChains   map[inboundChainKey]*listenerv3.FilterChain
	listenerFilters map[string]*listenerv3.ListenerFilter
	// prev is what the previous build left (buildMemo): equal inputs make
	// equal resources, so a workload's own resource whose key comes up
	// again is not made again but handed out as prev's entry, with its
	// served form and what that build found of it. next collects the
	// entries handed out, for the next build (newBuildMemo).
	prev, next *buildMemo
	// Capture answers by redirect config (its JSON encoding, as in shapeKey)
	// and destination: each redirect answer builds the config's whole
	// capture, and a thousand workloads of one config ask it for the same
	// hundred service ports.
	captures map[captureKey]bool
	// configs interns the redirect configs' encodings (see config): the
	// keys of captures and of the build's shapes refer to one copy each.
	configs   map[string]int
	cfgs      []string
	configBuf []byte
	keyBuf    []byte // scratch: the key of a workload's own resource
}

// config returns the JSON encoding of c, one string for every equal config
// of the build, and its number in the build.
func (g *generator) config(c *redirect.Config) (string, int) {
	// Encoded into one buffer for the build, without reflection
	// (Config.AppendJSON): only a config not seen yet is copied.
	g.configBuf = c.AppendJSON(g.configBuf[:0])
	if id, ok := g.configs[string(g.configBuf)]; ok {
		return g.cfgs[id], id
	}
	s := string(g.configBuf)
	g.configs[s] = len(g.cfgs)
	g.cfgs = append(g.cfgs, s)
	return s, len(g.cfgs) - 1
}

// captureKey is one capturesOutbound question (inbound: dst invalid).
type captureKey struct {
	config string
	dst    netip.Addr
	port   uint16
}

// capturesOutbound is capturesOutbound(c, dst, port), answered once per
// config (named by cfg, "" for no memo) and destination.
func (g *generator) capturesOutbound(cfg string, c *redirect.Config, dst netip.Addr, port uint16) bool {
	if cfg == "" {
		return capturesOutbound(c, dst, port)
	}
	k := captureKey{cfg, dst, port}
	ok, seen := g.captured(k)
	if !seen {
		ok = capturesOutbound(c, dst, port)
		g.captures[k] = ok
	}
	return ok
}

// captured returns the memoized answer of k, this build's or the previous one's.
func (g *generator) captured(k captureKey) (ok, seen bool) {
	if ok, seen = g.captures[k]; seen {
		return ok, seen
	}
	if ok, seen = g.prev.captures[k]; seen {
		g.captures[k] = ok
	}
	return ok, seen
}

// capturesInbound is capturesInbound(c, port), memoized as capturesOutbound.
func (g *generator) capturesInbound(cfg string, c *redirect.Config, port uint16) bool {
	if cfg == "" {
		return capturesInbound(c, port)
	}
	k := captureKey{config: cfg, port: port}
	ok, seen := g.captured(k)
	if !seen {
		ok = capturesInbound(c, port)
		g.captures[k] = ok
	}
	return ok
}

// inboundChainKey names a filter chain of inbound listeners: the loop guard
// of the inbound port (kind ChainLoopGuard), the passthrough to a cluster
// (ChainPassthrough, cluster), or a declared port (kind "", port, protocol).
type inboundChainKey struct {
	kind     string
	port     uint16
	protocol Protocol
	cluster  string
}

// serviceKey names one port of one service on one virtual IP (listeners) or for
// one set of IP families (clusters, fam).
type serviceKey struct {
	service *Service
	port    int // index in service.Ports
	vip     netip.Addr
	fam     string
}

type endpointAddr struct {
	addr        netip.Addr
	targetPorts map[string]uint16
}

// ownListener returns the listener of a workload's own of key: made by this
// build, or the previous build's entry of it (reused, and kept for the next
// build).
func (g *generator) ownListener(key []byte) (*listenerv3.Listener, *memoEntry) {
	// The memo first: after a change, most are there, and what is there is
	// never made.
	if e, ok := g.prev.listeners[string(key)]; ok {
		g.next.listeners[e.key] = e
		return nil, e
	}
	return g.own.listeners[string(key)], nil
}

// ownCluster is ownListener for clusters.
func (g *generator) ownCluster(key []byte) (*clusterv3.Cluster, *memoEntry) {
	if e, ok := g.prev.clusters[string(key)]; ok {
		g.next.clusters[e.key] = e
		return nil, e
	}
	return g.own.clusters[string(key)], nil
}

func newGenerator(m *Mesh) *generator {
	g := &generator{
		mesh:      m,
		services:  make(map[string]*Service, len(m.Services)),
		endpoints: make(map[string][]endpointAddr, len(m.Services)),
		listeners: make(map[string]*listenerv3.Listener),
		clusters:  make(map[string]*clusterv3.Cluster),

		serviceListeners: make(map[serviceKey]*listenerv3.Listener),
		serviceClusters:  make(map[serviceKey]*clusterv3.Cluster),
		reach:            make(map[string][]*Service),
		parts:            make(map[string]*outboundPart),
		dnsListeners:     make(map[string]*listenerv3.Listener),
		inboundChains:    make(map[inboundChainKey]*listenerv3.FilterChain),
		listenerFilters:  make(map[string]*listenerv3.ListenerFilter),
		captures:         make(map[captureKey]bool),
		configs:          make(map[string]int),
		prev:             &buildMemo{},
		next:             newMemo(0, 0),
	}
	g.own.listeners = make(map[string]*listenerv3.Listener)
	g.own.clusters = make(map[string]*clusterv3.Cluster)
	for i := range m.Services {
		s := &m.Services[i]
		g.services[s.Name] = s
		var eps []endpointAddr
		for _, e := range s.Endpoints {
			eps = append(eps, endpointAddr{e.Address, e.TargetPorts})
		}
		if len(s.Selector) > 0 {
			for j := range m.Workloads {
				if w := &m.Workloads[j]; s.selects(w) {
					for _, a := range w.Addresses {
						eps = append(eps, endpointAddr{addr: a})
					}
				}
			}
		}
		g.endpoints[s.Name] = eps
	}
	return g
}

// reachable returns the services w may reach, sorted by name.
func (g *generator) reachable(w *Workload) []*Service {
	key := strings.Join(w.Reach, "\x00")
	if out, ok := g.reach[key]; ok {
		return out
	}
	var out []*Service
	if slices.Contains(w.Reach, ReachAll) {
		for i := range g.mesh.Services {
			out = append(out, &g.mesh.Services[i])
		}
	} else {
		seen := make(map[string]bool, len(w.Reach))
		for _, name := range w.Reach {
			if s, ok := g.services[name]; ok && !seen[name] {
				seen[name] = true
				out = append(out, s)
			}
		}
	}
	slices.SortFunc(out, func(a, b *Service) int { return cmp.Compare(a.Name, b.Name) })
	g.reach[key] = out
	return out
}

// outboundPart is the part of a workload's resources that its outbound side
// makes: the outbound listeners, the listener of each captured virtual IP and
// port of the services it reaches, the DNS listeners, and the clusters they
// send to (blackhole, passthrough, the service clusters), each list sorted by
// name. It is made of the workload's redirect config, IP families and reach
// set alone (the key shapeKey returns with the shape's), so every workload
// with the same three is served the same part: the generator makes it, the
// checker checks it and the hasher serves it once per build. Made per
// workload, 10,000 distinct workloads that reach the same services each
// looped over every service, sorted some 200 resources and checked each of
// them against the node's others (most of a distinct build's time).
type outboundPart struct {
	Resources
}

// with returns p's resources and own (each sorted by name) merged in name
// order, appended to into's slices, emptied first.
func (p *outboundPart) with(own Resources, into Resources) Resources {
	return Resources{
		Listeners: merge(p.Listeners, p.Listeners, own.Listeners, own.Listeners, into.Listeners[:0]),
		Clusters:  merge(p.Clusters, p.Clusters, own.Clusters, own.Clusters, into.Clusters[:0]),
	}
}

// merge appends to into the values of two lists sorted by name in name
// order: a's values (an names them, one name per value) and b's (bn names
// them). A name in both lists comes from a first.
func merge[A, B interface{ GetName() string }, V any](an []A, a []V, bn []B, b []V, into []V) []V {
	i := 0
	for j, n := range bn {
		name := n.GetName()
		k, _ := slices.BinarySearchFunc(an[i:], name, func(m A, name string) int {
			if m.GetName() <= name {
				return -1 // equal names: a's first
			}
			return 1
		})
		into = append(into, a[i:i+k]...)
		into = append(into, b[j])
		i += k
	}
	return append(into, a[i:]...)
}

// ownResources are a workload's own resources (its inbound side): made by
// this build, sorted by name, and reused from the previous build's memo
// (memo: listeners and clusters, in no order). A generator without a memo
// (Mesh.Resources) makes them all.
type ownResources struct {
	Resources
	memo []*memoEntry
}

// workload returns the resources of w, whose redirect config is encoded as
// cfg (generator.config) and whose outbound side is named by part (the
// part's key shapeKey returns): the part every workload of that outbound side
// is served, and w's own resources, appended to into's slices, emptied first:
// a build reuses one set of slices for every workload.
func (g *generator) workload(w *Workload, cfg string, part []byte, into ownResources) (*outboundPart, ownResources) {
	p, ok := g.parts[string(part)]
	if !ok {
		p = g.outbound(w, cfg)
		g.parts[string(part)] = p
	}
	r := ownResources{Resources: Resources{Listeners: into.Listeners[:0], Clusters: into.Clusters[:0]}, memo: into.memo[:0]}
	c := &w.TransparentProxy
	if !c.Inbound.Enabled {
		return p, r
	}
	cluster := func(c *clusterv3.Cluster, e *memoEntry) string {
		if e != nil {
			r.memo = append(r.memo, e)
			return e.name
		}
		r.Clusters = append(r.Clusters, c)
		return c.GetName()
	}
	listener := func(l *listenerv3.Listener, e *memoEntry) {
		if e != nil {
			r.memo = append(r.memo, e)
		} else {
			r.Listeners = append(r.Listeners, l)
		}
	}
	fam := families(w)
	v4, v6 := fam.listen4, fam.listen6
	var ports []InboundPort
	for _, port := range w.Inbound {
		if g.capturesInbound(cfg, c, port.Port) {
			ports = append(ports, port)
		}
	}
	slices.SortFunc(ports, func(a, b InboundPort) int { return cmp.Compare(a.Port, b.Port) })
	for _, port := range ports {
		cluster(g.localAppCluster(port, c.Proxy.InboundPassthroughSource, v4, v6))
	}
	transparent := c.Mode == redirect.ModeTProxy
	if v4 {
		pt := cluster(g.inboundPassthrough(ClusterInboundPassthroughIPv4, c.Proxy.InboundPassthroughSource.IPv4))
		listener(g.inboundListener(ListenerInbound, netip.IPv4Unspecified(), c.Proxy.InboundPort, transparent, ports, pt))
	}
	if v6 {
		pt := cluster(g.inboundPassthrough(ClusterInboundPassthroughIPv6, c.Proxy.InboundPassthroughSource.IPv6))
		listener(g.inboundListener(ListenerInboundIPv6, netip.IPv6Unspecified(), c.Proxy.InboundPort, transparent, ports, pt))
	}
	// A handful of resources: "inbound" < "inbound-ipv6", and the local app
	// clusters' "inbound|<port>" sort after the passthrough clusters and by
	// their port's digits, not its value.
	sortByName(r.Listeners)
	sortByName(r.Clusters)
	return p, r
}

// sortByName sorts resources by name.
func sortByName[T interface{ GetName() string }](resources []T) {
	slices.SortFunc(resources, func(a, b T) int { return cmp.Compare(a.GetName(), b.GetName()) })
}

// outbound returns the outbound part of w's resources (outboundPart), whose
// redirect config is encoded as cfg.
func (g *generator) outbound(w *Workload, cfg string) *outboundPart {
	p := &outboundPart{}
	c := &w.TransparentProxy
	fam := families(w)
	v4, v6 := fam.listen4, fam.listen6
	famKey := familyKey(fam.reach4, fam.reach6)
	// Reused across parts: a build of many reach sets would make a map each.
	if g.used == nil {
		g.used = make(map[string]*clusterv3.Cluster)
	}
	usedClusters := g.used
	clear(usedClusters)
	use := func(cl *clusterv3.Cluster) { usedClusters[cl.GetName()] = cl }
	use(g.blackhole())

	// The DNS table: every reachable service's name, answered with the
	// virtual IPs the proxy serves listeners for (so the A and AAAA answers
	// follow the families the workload captures).
	dnsOn := c.DNS.Capture != "" && c.DNS.Capture != redirect.DNSCaptureOff
	var dnsVIPs []serviceVIP
	if c.Outbound.Enabled {
		catchAll := ClusterPassthrough
		if g.mesh.OutboundPolicy == RegistryOnly {
			catchAll = ClusterBlackhole
		} else {
			use(g.passthrough())
		}
		if v4 {
			p.Listeners = append(p.Listeners, g.outboundListener(ListenerOutbound, netip.IPv4Unspecified(), c.Proxy.OutboundPort, catchAll))
		}
		if v6 {
			p.Listeners = append(p.Listeners, g.outboundListener(ListenerOutboundIPv6, netip.IPv6Unspecified(), c.Proxy.OutboundPort, catchAll))
		}
		for _, s := range g.reachable(w) {
			for pi, port := range s.Ports {
				served := false
				for _, vip := range s.VirtualIPs {
					if (vip.Is4() && !v4) || (vip.Is6() && !v6) || !g.capturesOutbound(cfg, c, vip, port.Port) {
						continue
					}
					served = true
					p.Listeners = append(p.Listeners, g.serviceListener(s, pi, vip))
					if dnsOn {
						dnsVIPs = append(dnsVIPs, serviceVIP{s, vip})
					}
				}
				if served {
					use(g.serviceCluster(s, pi, famKey, fam.reach4, fam.reach6))
				}
			}
		}
	}

	if dnsOn {
		upstreams := g.mesh.DNS.upstreams(w)
		if v4 {
			p.Listeners = append(p.Listeners, g.dnsListener(ListenerDNS, netip.AddrFrom4([4]byte{127, 0, 0, 1}), c.DNS.Port, dnsVIPs, upstreams))
		}
		if v6 {
			p.Listeners = append(p.Listeners, g.dnsListener(ListenerDNSIPv6, netip.IPv6Loopback(), c.DNS.Port, dnsVIPs, upstreams))
		}
	}

	p.Clusters = make([]*clusterv3.Cluster, 0, len(usedClusters))
	for _, cl := range usedClusters {
		p.Clusters = append(p.Clusters, cl)
	}
	sortByName(p.Clusters)
	sortByName(p.Listeners)
	return p
}

func familyKey(v4, v6 bool) string {
	switch {
	case v4 && v6:
		return "dual"
	case v6:
		return "ipv6"
	}
	return "ipv4"
}

func socketAddress(a netip.Addr, port uint16) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       a.String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		// Only fails for a message without a registered type, a programming error.
		panic(fmt.Sprintf("pack %T: %v", m, err))
	}
	return a
}

func tcpProxyFilter(statPrefix, cluster string) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name: filterTCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
			StatPrefix:       statPrefix,
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		})},
	}
}

// httpFilter is an HTTP connection manager with one inline route to cluster, so
// the proxy never needs RDS.
func httpFilter(statPrefix, routeName, cluster string) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name: filterHCM,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&hcmv3.HttpConnectionManager{
			StatPrefix: statPrefix,
			RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
				Name: routeName,
				VirtualHosts: []*routev3.VirtualHost{{
					Name:    routeName,
					Domains: []string{"*"},
					Routes: []*routev3.Route{{
						Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
						Action: &routev3.Route_Route{Route: &routev3.RouteAction{
							ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
						}},
					}},
				}},
			}},
			HttpFilters: []*hcmv3.HttpFilter{{
				Name:       filterRouter,
				ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
			}},
		})},
	}
}

func portMatch(port uint16) *listenerv3.FilterChainMatch {
	return &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(uint32(port))}
}

func (g *generator) outboundListener(name string, addr netip.Addr, port uint16, catchAll string) *listenerv3.Listener {
	key := name + "|" + addr.String() + "|" + strconv.Itoa(int(port)) + "|" + catchAll
	if l, ok := g.listeners[key]; ok {
		return l
	}
	l := &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(addr, port),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		UseOriginalDst:   wrapperspb.Bool(true),
		FilterChains: []*listenerv3.FilterChain{
			{
				// A connection to the outbound port itself would be handed back to
				// this listener for ever.
				Name:             ChainLoopGuard,
				FilterChainMatch: portMatch(port),
				Filters:          []*listenerv3.Filter{tcpProxyFilter(ClusterBlackhole, ClusterBlackhole)},
			},
			{
				// Destinations without a service listener follow the outbound policy.
				Name:    ChainPassthrough,
				Filters: []*listenerv3.Filter{tcpProxyFilter(catchAll, catchAll)},
			},
		},
	}
	g.listeners[key] = l
	return l
}

func (g *generator) serviceListener(s *Service, pi int, vip netip.Addr) *listenerv3.Listener {
	key := serviceKey{service: s, port: pi, vip: vip}
	if l, ok := g.serviceListeners[key]; ok {
		return l
	}
	p := s.Ports[pi]
	name := ServiceListenerName(vip, p.Port)
	cluster := ServiceClusterName(s.Name, p.Port)
	f := tcpProxyFilter(cluster, cluster)
	if p.Protocol == ProtocolHTTP {
		f = httpFilter(cluster, cluster, cluster)
	}
	l := &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(vip, p.Port),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		// The outbound listener hands connections over by original destination;
		// nothing binds the virtual IP.
		BindToPort:   wrapperspb.Bool(false),
		FilterChains: []*listenerv3.FilterChain{{Name: cluster, Filters: []*listenerv3.Filter{f}}},
	}
	g.serviceListeners[key] = l
	return l
}

// inboundListener returns the inbound listener of these values: made (nil
// entry) or the previous build's entry of it.
func (g *generator) inboundListener(name string, addr netip.Addr, port uint16, transparent bool, ports []InboundPort, passthrough string) (*listenerv3.Listener, *memoEntry) {
	// Everything the listener is made of: a workload's own listener, the
	// same in the next build unless the workload changed.
	key := g.keyBuf[:0]
	key = append(key, name...)
	key = append(key, '|')
	key = addr.AppendTo(key)
	key = append(key, '|')
	key = strconv.AppendUint(key, uint64(port), 10)
	key = append(key, '|')
	key = strconv.AppendBool(key, transparent)
	key = append(key, '|')
	key = append(key, passthrough...)
	for _, p := range ports {
		key = append(key, '|')
		key = strconv.AppendUint(key, uint64(p.Port), 10)
		key = append(key, ' ')
		key = append(key, p.Protocol...)
	}
	g.keyBuf = key
	if l, e := g.ownListener(key); l != nil || e != nil {
		return l, e
	}
	chains := make([]*listenerv3.FilterChain, 0, len(ports)+2)
	chains = append(chains, g.inboundChain(inboundChainKey{kind: ChainLoopGuard, port: port}))
	for _, p := range ports {
		chains = append(chains, g.inboundChain(inboundChainKey{port: p.Port, protocol: p.Protocol}))
	}
	// Ports the workload did not declare still reach whatever listens there,
	// from the passthrough source the installer never recaptures.
	chains = append(chains, g.inboundChain(inboundChainKey{kind: ChainPassthrough, cluster: passthrough}))
	l := &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(addr, port),
		TrafficDirection: corev3.TrafficDirection_INBOUND,
		ListenerFilters:  []*listenerv3.ListenerFilter{g.listenerFilter(filterOriginalDst)},
		FilterChains:     chains,
	}
	if transparent {
		// TPROXY delivers connections addressed to the workload, not to the
		// listener's address; the listener needs IP_TRANSPARENT to accept them.
		l.Transparent = wrapperspb.Bool(true)
		// The app sees the client's address: the proxy connects to it from
		// that address (instead of the clusters' 127.0.0.6 / ::6) with the
		// TPROXY mark, by which the installed rules leave the connection alone
		// and route the app's replies back to the proxy.
		l.ListenerFilters = append(l.ListenerFilters, g.listenerFilter(filterOriginalSrc))
	}
	g.own.listeners[string(key)] = l
	return l, nil
}

// inboundChain returns the inbound filter chain named by k, shared by every
// inbound listener of the build that has it.
func (g *generator) inboundChain(k inboundChainKey) *listenerv3.FilterChain {
	if c, ok := g.inboundChains[k]; ok {
		return c
	}
	var c *listenerv3.FilterChain
	switch k.kind {
	case ChainLoopGuard:
		c = &listenerv3.FilterChain{
			Name:             ChainLoopGuard,
			FilterChainMatch: portMatch(k.port),
			Filters:          []*listenerv3.Filter{tcpProxyFilter(ClusterBlackhole, ClusterBlackhole)},
		}
	case ChainPassthrough:
		c = &listenerv3.FilterChain{
			Name:    ChainPassthrough,
			Filters: []*listenerv3.Filter{tcpProxyFilter(k.cluster, k.cluster)},
		}
	default:
		cluster := InboundClusterName(k.port)
		f := tcpProxyFilter(cluster, cluster)
		if k.protocol == ProtocolHTTP {
			f = httpFilter(cluster, cluster, cluster)
		}
		c = &listenerv3.FilterChain{
			Name:             cluster,
			FilterChainMatch: portMatch(k.port),
			Filters:          []*listenerv3.Filter{f},
		}
	}
	g.inboundChains[k] = c
	return c
}

// listenerFilter returns the inbound listeners' listener filter named name
// (original_dst, or original_src with the TPROXY mark), shared by every
// inbound listener of the build.
func (g *generator) listenerFilter(name string) *listenerv3.ListenerFilter {
	if f, ok := g.listenerFilters[name]; ok {
		return f
	}
	var config proto.Message = &originaldstv3.OriginalDst{}
	if name == filterOriginalSrc {
		config = &originalsrcv3.OriginalSrc{Mark: redirect.TProxyMark}
	}
	f := &listenerv3.ListenerFilter{Name: name, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(config)}}
	g.listenerFilters[name] = f
	return f
}

type serviceVIP struct {
	service *Service
	vip     netip.Addr
}

// dnsListener answers captured DNS queries on addr:port (UDP): the names of
// the services in vips with their virtual IPs, everything else from the
// upstreams (the mesh's that the workload can reach; the proxy's resolv.conf
// when the mesh has none).
// REDIRECT of a locally sent packet rewrites its destination to loopback, so
// the listener binds 127.0.0.1 and ::1: a wildcard-bound UDP socket could
// answer from another source address than the one the app asked.
func (g *generator) dnsListener(name string, addr netip.Addr, port uint16, vips []serviceVIP, upstreams []netip.AddrPort) *listenerv3.Listener {
	suffix := g.mesh.DNS.suffix()
	byName := make(map[string][]netip.Addr)
	for _, sv := range vips {
		n := strings.ToLower(sv.service.Name) + "." + strings.ToLower(suffix)
		if !slices.Contains(byName[n], sv.vip) {
			byName[n] = append(byName[n], sv.vip)
		}
	}
	names := slices.Sorted(maps.Keys(byName))
	var key strings.Builder
	key.WriteString(name + "|" + strconv.Itoa(int(port)))
	for _, u := range upstreams {
		key.WriteString("|" + u.String())
	}
	key.WriteString("|")
	for _, n := range names {
		slices.SortFunc(byName[n], func(a, b netip.Addr) int { return a.Compare(b) })
		key.WriteString("|" + n)
		for _, a := range byName[n] {
			key.WriteString("," + a.String())
		}
	}
	if l, ok := g.dnsListeners[key.String()]; ok {
		return l
	}
	domains := make([]*dnsv3.DnsTable_DnsVirtualDomain, 0, len(names))
	for _, n := range names {
		addrs := make([]string, 0, len(byName[n]))
		for _, a := range byName[n] {
			addrs = append(addrs, a.String())
		}
		domains = append(domains, &dnsv3.DnsTable_DnsVirtualDomain{
			Name: n,
			Endpoint: &dnsv3.DnsTable_DnsEndpoint{EndpointConfig: &dnsv3.DnsTable_DnsEndpoint_AddressList{
				AddressList: &dnsv3.DnsTable_AddressList{Address: addrs},
			}},
			AnswerTtl: durationpb.New(DNSAnswerTTL),
		})
	}
	resolvers := make([]*corev3.Address, 0, len(upstreams))
	for _, u := range upstreams {
		a := socketAddress(u.Addr(), u.Port())
		a.GetSocketAddress().Protocol = corev3.SocketAddress_UDP
		resolvers = append(resolvers, a)
	}
	addrUDP := socketAddress(addr, port)
	addrUDP.GetSocketAddress().Protocol = corev3.SocketAddress_UDP
	l := &listenerv3.Listener{
		Name:             name,
		Address:          addrUDP,
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name: filterDNS,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&dnsfilterv3.DnsFilterConfig{
				StatPrefix:      name,
				CaseInsensitive: true,
				ServerConfig: &dnsfilterv3.DnsFilterConfig_ServerContextConfig{ConfigSource: &dnsfilterv3.DnsFilterConfig_ServerContextConfig_InlineDnsTable{
					InlineDnsTable: &dnsv3.DnsTable{VirtualDomains: domains},
				}},
				ClientConfig: &dnsfilterv3.DnsFilterConfig_ClientContextConfig{
					ResolverTimeout: durationpb.New(connectTimeout),
					TypedDnsResolverConfig: &corev3.TypedExtensionConfig{
						Name:        dnsResolverCares,
						TypedConfig: mustAny(&caresv3.CaresDnsResolverConfig{Resolvers: resolvers}),
					},
					MaxPendingLookups: 1024,
				},
			})},
		}},
	}
	g.dnsListeners[key.String()] = l
	return l
}

func (g *generator) blackhole() *clusterv3.Cluster {
	if c, ok := g.clusters[ClusterBlackhole]; ok {
		return c
	}
	c := &clusterv3.Cluster{
		Name:                 ClusterBlackhole,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
	}
	g.clusters[ClusterBlackhole] = c
	return c
}

func (g *generator) passthrough() *clusterv3.Cluster {
	if c, ok := g.clusters[ClusterPassthrough]; ok {
		return c
	}
	c := &clusterv3.Cluster{
		Name:                 ClusterPassthrough,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(connectTimeout),
	}
	g.clusters[ClusterPassthrough] = c
	return c
}

// inboundPassthrough returns the inbound passthrough cluster named name,
// bound to source: made (nil entry) or the previous build's entry of it.
func (g *generator) inboundPassthrough(name string, source netip.Addr) (*clusterv3.Cluster, *memoEntry) {
	key := append(append(append(g.keyBuf[:0], name...), '|'), source.String()...)
	g.keyBuf = key
	if c, e := g.ownCluster(key); c != nil || e != nil {
		return c, e
	}
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(connectTimeout),
		// The installer returns traffic from this source untouched, so the
		// proxy's connection to the app is not captured again.
		UpstreamBindConfig: &corev3.BindConfig{
			SourceAddress: &corev3.SocketAddress{
				Address:       source.String(),
				PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0},
			},
			Freebind: freebind(source),
		},
	}
	g.own.clusters[string(key)] = c
	return c, nil
}

// localAppCluster reaches the app behind a declared inbound port the way the
// passthrough does: at the address the client dialed (the workload's own
// address, the original destination), on appPort, from the inbound passthrough
// source the installed rules return untouched. An app bound only to loopback is
// therefore not reachable through the proxy, and one bound only to the
// workload's address is; the proxy never exposes a loopback-only port.
// Made (nil entry), or the previous build's entry of it.
func (g *generator) localAppCluster(p InboundPort, src redirect.AddressPair, v4, v6 bool) (*clusterv3.Cluster, *memoEntry) {
	key := append(g.keyBuf[:0], "inbound|"...)
	key = strconv.AppendUint(key, uint64(p.Port), 10)
	key = append(key, '|')
	key = strconv.AppendUint(key, uint64(p.AppPort), 10)
	key = append(append(key, '|'), familyKey(v4, v6)...)
	key = src.IPv4.AppendTo(append(key, '|'))
	key = src.IPv6.AppendTo(append(key, '|'))
	g.keyBuf = key
	if c, e := g.ownCluster(key); c != nil || e != nil {
		return c, e
	}
	name := InboundClusterName(p.Port)
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(connectTimeout),
		LbConfig: &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{
			UpstreamPortOverride: wrapperspb.UInt32(uint32(p.AppPort)),
		}},
		UpstreamBindConfig: sourceBindConfig(src, v4, v6),
	}
	g.own.clusters[string(key)] = c
	return c, nil
}

// sourceBindConfig binds upstream connections to the passthrough source of the
// upstream's family: Envoy picks, among source_address and
// extra_source_addresses, the one of the destination's family.
func sourceBindConfig(src redirect.AddressPair, v4, v6 bool) *corev3.BindConfig {
	addr := func(a netip.Addr) *corev3.SocketAddress {
		return &corev3.SocketAddress{Address: a.String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0}}
	}
	if !v4 {
		return &corev3.BindConfig{SourceAddress: addr(src.IPv6), Freebind: freebind(src.IPv6)}
	}
	b := &corev3.BindConfig{SourceAddress: addr(src.IPv4), Freebind: freebind(src.IPv4)}
	if v6 {
		b.ExtraSourceAddresses = []*corev3.ExtraSourceAddress{{Address: addr(src.IPv6)}}
		b.Freebind = freebind(src.IPv4, src.IPv6)
	}
	return b
}

// freebind is BindConfig.freebind of a bind to the passthrough sources: true
// when one of them is not local by itself (::6, unlike 127.0.0.6). detour-cni
// makes ::6 local with a route on lo but puts no address there (the runtime's
// loopback network refuses one, docs/cni.md), and binding an address no
// interface holds needs IP_FREEBIND / IPV6_FREEBIND; where the address is on
// lo (detour install) the option changes nothing. nil otherwise.
func freebind(sources ...netip.Addr) *wrapperspb.BoolValue {
	for _, a := range sources {
		if !a.IsLoopback() {
			return wrapperspb.Bool(true)
		}
	}
	return nil
}

func (g *generator) serviceCluster(s *Service, pi int, famKey string, v4, v6 bool) *clusterv3.Cluster {
	key := serviceKey{service: s, port: pi, fam: famKey}
	if c, ok := g.serviceClusters[key]; ok {
		return c
	}
	p := s.Ports[pi]
	name := ServiceClusterName(s.Name, p.Port)
	var eps []netip.AddrPort
	for _, e := range g.endpoints[s.Name] {
		if (e.addr.Is4() && !v4) || (e.addr.Is6() && !v6) {
			continue
		}
		port := p.TargetPort
		if tp, ok := e.targetPorts[p.Name]; ok {
			port = tp
		}
		eps = append(eps, netip.AddrPortFrom(e.addr, port))
	}
	slices.SortFunc(eps, func(a, b netip.AddrPort) int { return a.Compare(b) })
	eps = slices.Compact(eps)
	c := staticCluster(name, eps)
	g.serviceClusters[key] = c
	return c
}

// staticCluster lists its endpoints inline (load_assignment), so the proxy never
// needs EDS.
func staticCluster(name string, eps []netip.AddrPort) *clusterv3.Cluster {
	lbs := make([]*endpointv3.LbEndpoint, 0, len(eps))
	for _, ep := range eps {
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: socketAddress(ep.Addr(), ep.Port()),
		}}})
	}
	la := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	if len(lbs) > 0 {
		la.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LoadAssignment:       la,
	}
}

// YAML renders the resources as deterministic YAML (protojson with sorted keys,
// typed configs expanded): the form golden files and `detour control-plane
// resources` print.
func (r Resources) YAML() ([]byte, error) {
	type doc struct {
		Listeners []json.RawMessage `json:"listeners"`
		Clusters  []json.RawMessage `json:"clusters"`
	}
	var d doc
	for _, l := range r.Listeners {
		b, err := protojson.Marshal(l)
		if err != nil {
			return nil, fmt.Errorf("render listener %s: %w", l.GetName(), err)
		}
		d.Listeners = append(d.Listeners, b)
	}
	for _, c := range r.Clusters {
		b, err := protojson.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("render cluster %s: %w", c.GetName(), err)
		}
		d.Clusters = append(d.Clusters, b)
	}
	js, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("render resources: %w", err)
	}
	// JSONToYAML sorts keys and drops protojson's deliberately unstable spacing.
	return yaml.JSONToYAML(js)
}
