package controlplane

import (
	"net/netip"
	"testing"
)

// TestRoute finds, in the resources served for the example mesh's "app", the
// listener, filter chain and cluster each kind of connection ends in.
func TestRoute(t *testing.T) {
	t.Parallel()
	m, err := LoadMesh("../examples/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := m.Resources("app")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	tests := []struct {
		name     string
		inbound  bool
		dst      netip.Addr
		port     uint16
		listener string
		cluster  string
		through  bool
		refused  bool
	}{
		{"a service's virtual IP", false, a("198.51.100.80"), 80, "198.51.100.80:80", ServiceClusterName("backend", 80), false, false},
		{"a service's IPv6 virtual IP", false, a("2001:db8:ffff::80"), 80, "[2001:db8:ffff::80]:80", ServiceClusterName("backend", 80), false, false},
		{"a tcp service", false, a("198.51.100.81"), 5432, "198.51.100.81:5432", ServiceClusterName("database", 5432), false, false},
		{"no service: passthrough", false, a("192.0.2.99"), 443, ListenerOutbound, ClusterPassthrough, true, false},
		{"a service IP on another port", false, a("198.51.100.80"), 81, ListenerOutbound, ClusterPassthrough, true, false},
		{"IPv6 passthrough", false, a("2001:db8::99"), 443, ListenerOutboundIPv6, ClusterPassthrough, true, false},
		{"the loop guard", false, a("192.0.2.99"), 15001, ListenerOutbound, ClusterBlackhole, false, true},
		{"a declared inbound port", true, a("203.0.113.2"), 8000, ListenerInbound, InboundClusterName(8000), false, false},
		{"an undeclared inbound port", true, a("2001:db8:1::2"), 9000, ListenerInboundIPv6, ClusterInboundPassthroughIPv6, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := r.Route(tt.inbound, tt.dst, tt.port)
			if err != nil {
				t.Fatal(err)
			}
			if got.Listener != tt.listener || got.Cluster != tt.cluster || got.Passthrough != tt.through || got.Refused != tt.refused || got.FilterChain == "" {
				t.Errorf("got %+v, want listener %s cluster %s passthrough %v refused %v", got, tt.listener, tt.cluster, tt.through, tt.refused)
			}
		})
	}
}
