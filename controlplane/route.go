package controlplane

import (
	"fmt"
	"net/netip"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
)

// EnvoyRoute is where a node's proxy sends one connection that capture handed
// it: the listener and filter chain that take it and the cluster they send it
// to (`detour explain`'s Envoy side).
type EnvoyRoute struct {
	Listener    string `json:"listener"`
	FilterChain string `json:"filterChain"`
	Cluster     string `json:"cluster"`
	// Passthrough says the cluster sends the connection on to the
	// destination it was dialed to (or, inbound, to the app) unchanged.
	Passthrough bool `json:"passthrough"`
	// Refused says the cluster has no endpoint (blackhole): the loop guard,
	// or registryOnly for a destination that is no service.
	Refused bool `json:"refused"`
}

// Route finds the listener, filter chain and cluster of r that serve a
// connection to dst:port once capture redirected it: outbound, the service
// listener on dst:port when there is one (the outbound listener hands the
// connection over by original destination), else the outbound listener of
// dst's family; inbound, the inbound listener of dst's family. It reads the
// served resources themselves, so it answers what Envoy would do with them.
func (r Resources) Route(inbound bool, dst netip.Addr, port uint16) (EnvoyRoute, error) {
	dst = dst.Unmap()
	name := ListenerOutbound
	switch {
	case inbound && dst.Is6():
		name = ListenerInboundIPv6
	case inbound:
		name = ListenerInbound
	case dst.Is6():
		name = ListenerOutboundIPv6
	}
	var catchAll *listenerv3.Listener
	for _, l := range r.Listeners {
		sa := l.GetAddress().GetSocketAddress()
		if !inbound && l.GetBindToPort() != nil && !l.GetBindToPort().GetValue() && sa.GetPortValue() == uint32(port) {
			if a, err := netip.ParseAddr(sa.GetAddress()); err == nil && a.Unmap() == dst {
				return routeThrough(l, port)
			}
		}
		if l.GetName() == name {
			catchAll = l
		}
	}
	if catchAll == nil {
		return EnvoyRoute{}, fmt.Errorf("no %s listener is served: the proxy would refuse the connection", name)
	}
	return routeThrough(catchAll, port)
}

// routeThrough picks the filter chain of l for a destination port: the one
// that matches the port, else the one without a match.
func routeThrough(l *listenerv3.Listener, port uint16) (EnvoyRoute, error) {
	var chosen *listenerv3.FilterChain
	for _, fc := range l.GetFilterChains() {
		m := fc.GetFilterChainMatch()
		if m.GetDestinationPort() != nil && m.GetDestinationPort().GetValue() == uint32(port) {
			chosen = fc
			break
		}
		if m.GetDestinationPort() == nil && chosen == nil {
			chosen = fc
		}
	}
	if chosen == nil {
		return EnvoyRoute{}, fmt.Errorf("listener %s has no filter chain for port %d", l.GetName(), port)
	}
	rt := EnvoyRoute{Listener: l.GetName(), FilterChain: chosen.GetName()}
	for _, f := range chosen.GetFilters() {
		switch {
		case f.GetTypedConfig().MessageIs(&tcpproxyv3.TcpProxy{}):
			var tp tcpproxyv3.TcpProxy
			if err := f.GetTypedConfig().UnmarshalTo(&tp); err != nil {
				return rt, fmt.Errorf("listener %s: %w", l.GetName(), err)
			}
			rt.Cluster = tp.GetCluster()
		case f.GetTypedConfig().MessageIs(&hcmv3.HttpConnectionManager{}):
			var hcm hcmv3.HttpConnectionManager
			if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
				return rt, fmt.Errorf("listener %s: %w", l.GetName(), err)
			}
			for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
				for _, ro := range vh.GetRoutes() {
					if c := ro.GetRoute().GetCluster(); c != "" && rt.Cluster == "" {
						rt.Cluster = c
					}
				}
			}
		}
	}
	if rt.Cluster == "" {
		return rt, fmt.Errorf("listener %s, filter chain %s: no cluster found", l.GetName(), chosen.GetName())
	}
	switch rt.Cluster {
	case ClusterPassthrough, ClusterInboundPassthroughIPv4, ClusterInboundPassthroughIPv6:
		rt.Passthrough = true
	case ClusterBlackhole:
		rt.Refused = true
	}
	return rt, nil
}
