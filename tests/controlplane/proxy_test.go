//go:build linux

package cpe2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/sys/unix"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	// Typed configs the proxy unpacks.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"

	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/origdst"
)

// testProxy stands in for Envoy: an ADS client that applies the listeners and
// clusters it is served, and a TCP data plane that follows them inside the
// workload's network namespace, as the proxy's user.
type testProxy struct {
	t    *testing.T
	ns   *lab.NetNS
	cred *lab.Cred // the proxy's owner: its traffic is never captured

	mu        sync.Mutex
	listeners map[string]*listenerv3.Listener
	clusters  map[string]*clusterv3.Cluster
	bound     map[string]*boundListener // by listener name
	applied   [2]string                 // versions of listeners and clusters applied
	routes    []route                   // every connection handled, in order
	rr        map[string]int            // round robin per cluster
}

type boundListener struct {
	addr        netip.AddrPort
	transparent bool
	udp         bool
	ln          io.Closer
}

// route is how the proxy handled one connection.
type route struct {
	Listener string         // the listener that received it
	Handler  string         // the listener whose filter chain handled it (after a hand-off)
	Chain    string         // the filter chain
	Cluster  string         // the cluster it went to ("" = refused)
	Original netip.AddrPort // the original destination
	Peer     netip.AddrPort // the client as the proxy saw it
	Upstream netip.AddrPort // where the proxy connected ("" = nowhere)
	// DNS queries: the question ("backend.mesh. A") and how it was answered:
	// Chain is "table" (from the served dns_filter table) or "upstream"
	// (forwarded to Upstream).
	Query string
}

func newTestProxy(t *testing.T, ns *lab.NetNS, cred *lab.Cred) *testProxy {
	return &testProxy{
		t: t, ns: ns, cred: cred,
		listeners: map[string]*listenerv3.Listener{},
		clusters:  map[string]*clusterv3.Cluster{},
		bound:     map[string]*boundListener{},
		rr:        map[string]int{},
	}
}

// run connects to the control plane as node and applies what it is served until
// ctx ends. It reports errors through t.
func (p *testProxy) run(ctx context.Context, xds, node string) {
	conn, err := grpc.NewClient(xds, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		p.t.Errorf("test proxy: dial control plane: %v", err)
		return
	}
	defer conn.Close()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		p.t.Errorf("test proxy: open ADS stream: %v", err)
		return
	}
	// Like Envoy: clusters first, then listeners, on one ADS stream.
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: typ}); err != nil {
			p.t.Errorf("test proxy: request %s: %v", typ, err)
			return
		}
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			if ctx.Err() == nil {
				p.t.Errorf("test proxy: receive: %v", err)
			}
			return
		}
		req := &discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce(), VersionInfo: resp.GetVersionInfo()}
		if err := p.apply(resp); err != nil {
			// NACK: keep the previous version, as Envoy does.
			p.t.Errorf("test proxy: rejected %s version %s: %v", resp.GetTypeUrl(), resp.GetVersionInfo(), err)
			p.mu.Lock()
			if resp.GetTypeUrl() == resourcev3.ListenerType {
				req.VersionInfo = p.applied[0]
			} else {
				req.VersionInfo = p.applied[1]
			}
			p.mu.Unlock()
			req.ErrorDetail = &rpcstatus.Status{Message: err.Error()}
		}
		if err := st.Send(req); err != nil {
			p.t.Errorf("test proxy: ACK: %v", err)
			return
		}
	}
}

// apply installs a SotW response: the whole set of listeners or clusters.
func (p *testProxy) apply(resp *discoveryv3.DiscoveryResponse) error {
	switch resp.GetTypeUrl() {
	case resourcev3.ClusterType:
		clusters := map[string]*clusterv3.Cluster{}
		for _, a := range resp.GetResources() {
			c := &clusterv3.Cluster{}
			if err := a.UnmarshalTo(c); err != nil {
				return err
			}
			clusters[c.GetName()] = c
		}
		p.mu.Lock()
		p.clusters, p.applied[1] = clusters, resp.GetVersionInfo()
		p.mu.Unlock()
		return nil
	case resourcev3.ListenerType:
		listeners := map[string]*listenerv3.Listener{}
		for _, a := range resp.GetResources() {
			l := &listenerv3.Listener{}
			if err := a.UnmarshalTo(l); err != nil {
				return err
			}
			listeners[l.GetName()] = l
		}
		return p.applyListeners(listeners, resp.GetVersionInfo())
	}
	return fmt.Errorf("unexpected type %s", resp.GetTypeUrl())
}

// applyListeners binds new listeners, closes removed ones and rebinds those
// whose address or transparency changed.
func (p *testProxy) applyListeners(listeners map[string]*listenerv3.Listener, version string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, b := range p.bound {
		l, ok := listeners[name]
		if !ok || !binds(l) || socketAddr(l.GetAddress()) != b.addr || l.GetTransparent().GetValue() != b.transparent || isUDP(l) != b.udp {
			b.ln.Close()
			delete(p.bound, name)
		}
	}
	for name, l := range listeners {
		if !binds(l) {
			continue
		}
		if _, ok := p.bound[name]; ok {
			continue
		}
		b := &boundListener{addr: socketAddr(l.GetAddress()), transparent: l.GetTransparent().GetValue(), udp: isUDP(l)}
		if b.udp {
			pc, err := p.listenUDP(b.addr)
			if err != nil {
				return fmt.Errorf("bind udp listener %s on %s: %w", name, b.addr, err)
			}
			b.ln = pc
			p.bound[name] = b
			go p.serveDNS(name, pc)
			continue
		}
		ln, err := p.listen(b.addr, b.transparent)
		if err != nil {
			return fmt.Errorf("bind listener %s on %s: %w", name, b.addr, err)
		}
		b.ln = ln
		p.bound[name] = b
		go p.accept(name, ln)
	}
	p.listeners, p.applied[0] = listeners, version
	return nil
}

func isUDP(l *listenerv3.Listener) bool {
	return l.GetAddress().GetSocketAddress().GetProtocol() == corev3.SocketAddress_UDP
}

func binds(l *listenerv3.Listener) bool {
	return l.GetBindToPort() == nil || l.GetBindToPort().GetValue()
}

func socketAddr(a *corev3.Address) netip.AddrPort {
	sa := a.GetSocketAddress()
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, uint16(sa.GetPortValue()))
}

// listen binds inside the workload's namespace, as Envoy would: IPV6_V6ONLY on
// [::] (so it does not collide with 0.0.0.0), IP_TRANSPARENT when asked.
func (p *testProxy) listen(addr netip.AddrPort, transparent bool) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if addr.Addr().Is6() {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_V6ONLY, 1)
				if serr == nil && transparent {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				}
			} else if transparent {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	var ln net.Listener
	err := p.ns.Do(nil, func() error {
		var err error
		ln, err = lc.Listen(context.Background(), network, addr.String())
		return err
	})
	return ln, err
}

func (p *testProxy) accept(name string, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.handle(name, c.(*net.TCPConn))
	}
}

// handle follows the served config for one connection, the way Envoy does.
func (p *testProxy) handle(name string, c *net.TCPConn) {
	defer c.Close()
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	rt := route{Listener: name, Peer: unmap(peer)}

	p.mu.Lock()
	l := p.listeners[name]
	p.mu.Unlock()
	if l == nil {
		return
	}
	// The original destination: the socket's local address under TPROXY, the
	// conntrack entry's (SO_ORIGINAL_DST) after REDIRECT.
	original := unmap(local)
	if (l.GetUseOriginalDst().GetValue() || hasOriginalDstFilter(l)) && !l.GetTransparent().GetValue() {
		if o, err := origdst.Get(c); err == nil {
			original = unmap(o)
		}
	}
	rt.Original = original

	p.mu.Lock()
	handler := l
	if l.GetUseOriginalDst().GetValue() {
		handler = p.handOff(l, original)
	}
	rt.Handler = handler.GetName()
	chain := matchChain(handler, original)
	var cluster *clusterv3.Cluster
	if chain != nil {
		rt.Chain = chain.GetName()
		rt.Cluster = chainCluster(chain)
		cluster = p.clusters[rt.Cluster]
	}
	var upstream, source netip.AddrPort
	if cluster != nil {
		upstream, source = p.pick(cluster, original)
	}
	// original_src (Envoy's listener filter): the upstream connection comes
	// from the client's own address, transparent and marked, whatever the
	// cluster's bind config says.
	mark, originalSrc := originalSrcMark(l)
	if originalSrc && upstream.IsValid() {
		source = netip.AddrPortFrom(rt.Peer.Addr(), 0)
	}
	rt.Upstream = upstream
	p.routes = append(p.routes, rt)
	p.mu.Unlock()

	if !upstream.IsValid() {
		return // no chain, a missing cluster, or a cluster without endpoints: refuse
	}
	up, err := p.dial(upstream, source, originalSrc, mark)
	if err != nil {
		p.t.Logf("test proxy: %s → %s: %v", name, upstream, err)
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, c)
		_ = up.CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(c, up)
	_ = c.CloseWrite()
	<-done
}

func hasOriginalDstFilter(l *listenerv3.Listener) bool {
	for _, f := range l.GetListenerFilters() {
		if f.GetName() == "envoy.filters.listener.original_dst" {
			return true
		}
	}
	return false
}

// handOff finds the listener a use_original_dst listener hands a connection
// to: one whose address is the original destination, else a wildcard
// listener on that port, else the receiving listener itself. Called with mu.
func (p *testProxy) handOff(l *listenerv3.Listener, original netip.AddrPort) *listenerv3.Listener {
	var wildcard *listenerv3.Listener
	for _, other := range p.listeners {
		a := socketAddr(other.GetAddress())
		if a == original {
			return other
		}
		if a.Port() == original.Port() && a.Addr().IsUnspecified() && a.Addr().Is4() == original.Addr().Is4() {
			wildcard = other
		}
	}
	if wildcard != nil {
		return wildcard
	}
	return l
}

// matchChain picks the filter chain for the original destination: a chain for
// its port before a chain without a port, as Envoy's matching order does.
func matchChain(l *listenerv3.Listener, original netip.AddrPort) *listenerv3.FilterChain {
	var catchAll *listenerv3.FilterChain
	for _, fc := range l.GetFilterChains() {
		m := fc.GetFilterChainMatch()
		if p := m.GetDestinationPort(); p != nil {
			if p.GetValue() == uint32(original.Port()) {
				return fc
			}
			continue
		}
		if catchAll == nil {
			catchAll = fc
		}
	}
	if catchAll == nil {
		return l.GetDefaultFilterChain()
	}
	return catchAll
}

// chainCluster is the cluster of the chain's network filter: tcp_proxy's, or
// the first route's of an HTTP connection manager (forwarded as bytes).
func chainCluster(fc *listenerv3.FilterChain) string {
	for _, f := range fc.GetFilters() {
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			continue
		}
		switch t := m.(type) {
		case *tcpproxyv3.TcpProxy:
			return t.GetCluster()
		case *hcmv3.HttpConnectionManager:
			for _, vh := range t.GetRouteConfig().GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					if r.GetMatch().GetPrefix() == "/" {
						return r.GetRoute().GetCluster()
					}
				}
			}
		}
	}
	return ""
}

// pick chooses the upstream of a cluster (round robin over static endpoints,
// the original destination for ORIGINAL_DST) and the source to bind. Called
// with mu.
func (p *testProxy) pick(c *clusterv3.Cluster, original netip.AddrPort) (upstream, source netip.AddrPort) {
	switch c.GetType() {
	case clusterv3.Cluster_ORIGINAL_DST:
		upstream = original
		if o := c.GetOriginalDstLbConfig().GetUpstreamPortOverride(); o != nil {
			upstream = netip.AddrPortFrom(original.Addr(), uint16(o.GetValue()))
		}
	case clusterv3.Cluster_STATIC:
		var eps []netip.AddrPort
		for _, le := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range le.GetLbEndpoints() {
				eps = append(eps, socketAddr(lb.GetEndpoint().GetAddress()))
			}
		}
		if len(eps) == 0 {
			return netip.AddrPort{}, netip.AddrPort{}
		}
		// Prefer the original destination's family, as a proxy in an
		// IPv4-only or IPv6-only network must.
		var same []netip.AddrPort
		for _, e := range eps {
			if e.Addr().Is4() == original.Addr().Is4() {
				same = append(same, e)
			}
		}
		if len(same) > 0 {
			eps = same
		}
		upstream = eps[p.rr[c.GetName()]%len(eps)]
		p.rr[c.GetName()]++
	default:
		return netip.AddrPort{}, netip.AddrPort{}
	}
	// As Envoy: the source address of the upstream's family among
	// source_address and extra_source_addresses.
	bind := c.GetUpstreamBindConfig()
	sources := []*corev3.SocketAddress{bind.GetSourceAddress()}
	for _, e := range bind.GetExtraSourceAddresses() {
		sources = append(sources, e.GetAddress())
	}
	for _, sa := range sources {
		if sa == nil {
			continue
		}
		if ip, err := netip.ParseAddr(sa.GetAddress()); err == nil && ip.Is4() == upstream.Addr().Is4() {
			source = netip.AddrPortFrom(ip, uint16(sa.GetPortValue()))
			break
		}
	}
	return upstream, source
}

func originalSrcMark(l *listenerv3.Listener) (uint32, bool) {
	for _, f := range l.GetListenerFilters() {
		if f.GetName() != "envoy.filters.listener.original_src" {
			continue
		}
		cfg := &originalsrcv3.OriginalSrc{}
		if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
			return 0, false
		}
		return cfg.GetMark(), true
	}
	return 0, false
}

// dial connects as the proxy's user inside the namespace; transparent binds
// a foreign source address (IP_TRANSPARENT) and marks the packets.
func (p *testProxy) dial(to, from netip.AddrPort, transparent bool, mark uint32) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	if from.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(from)
	}
	if transparent {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if to.Addr().Is6() {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
				}
				if serr == nil && mark != 0 {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
				}
			})
			return errors.Join(err, serr)
		}
	}
	var c net.Conn
	err := p.ns.Do(p.cred, func() error {
		var err error
		c, err = d.Dial("tcp", to.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// versions returns the listener and cluster versions the proxy has applied.
func (p *testProxy) versions() (listeners, clusters string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied[0], p.applied[1]
}

// handled returns the routes recorded since mark (a length of routes).
func (p *testProxy) handled(mark int) []route {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]route(nil), p.routes[mark:]...)
}

func (p *testProxy) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.routes)
}

// close stops every listener.
func (p *testProxy) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, b := range p.bound {
		b.ln.Close()
		delete(p.bound, name)
	}
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
