package controlplane

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/detour-mesh/detour/redirect"
)

func TestResourcesGolden(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		node   string
		policy OutboundPolicy
	}{
		{name: "redirect-ipv4", node: "redirect-ipv4"},
		{name: "redirect-ipv6", node: "redirect-ipv6"},
		{name: "redirect-dual", node: "redirect-dual"},
		{name: "tproxy-ipv4", node: "tproxy-ipv4"},
		{name: "tproxy-dual", node: "tproxy-dual"},
		{name: "registry-only-dual", node: "redirect-dual", policy: RegistryOnly},
		{name: "registry-only-ipv6", node: "redirect-ipv6", policy: RegistryOnly},
		{name: "excluded-ports", node: "excluded-ports"},
		{name: "include-ports", node: "include-ports"},
		{name: "include-cidrs", node: "include-cidrs"},
		{name: "istio-ports", node: "istio-ports"},
		{name: "outbound-only", node: "outbound-only"},
		{name: "inbound-only", node: "inbound-only"},
		{name: "dns-dual", node: "dns-dual"},
		{name: "dns-ipv4", node: "dns-ipv4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := loadMesh(t, "testdata/matrix.yaml")
			if tt.policy != "" {
				m.OutboundPolicy = tt.policy
			}
			b, err := buildSnapshots(m)
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			ns := b.nodes[tt.node]
			r, err := m.Resources(tt.node)
			if err != nil {
				t.Fatal(err)
			}
			out, err := r.YAML()
			if err != nil {
				t.Fatal(err)
			}
			header := fmt.Sprintf("# node %s, outboundPolicy %s\n# versions: listeners %s, clusters %s\n",
				tt.node, m.OutboundPolicy, ns.Versions().Listeners, ns.Versions().Clusters)
			checkGolden(t, tt.name, append([]byte(header), out...))
		})
	}
}

// TestListenersAgreeWithCapture checks, for every workload of the matrix, the
// promise the listeners make to the installer: they listen on the proxy ports
// of the workload's redirect config, a service listener exists exactly for
// the captured virtual IP:port pairs, and an inbound chain exactly for the
// captured declared ports.
func TestListenersAgreeWithCapture(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, "testdata/matrix.yaml")
	for _, w := range m.Workloads {
		t.Run(w.NodeID, func(t *testing.T) {
			r, err := m.Resources(w.NodeID)
			if err != nil {
				t.Fatal(err)
			}
			c := w.TransparentProxy
			// The families the installer captures for the same config, in a
			// namespace with IPv6 (the usual case, and the most it captures).
			plan, err := redirect.NewPlan(c, redirect.Facts{IPv6: true})
			if err != nil {
				t.Fatal(err)
			}
			_, v4 := plan.Family(redirect.IPv4)
			_, v6 := plan.Family(redirect.IPv6)
			if fam := families(&w); fam.listen4 != v4 || fam.listen6 != v6 {
				t.Errorf("listener families ipv4 %v ipv6 %v, installer captures ipv4 %v ipv6 %v", fam.listen4, fam.listen6, v4, v6)
			}
			byName := map[string]*listenerv3.Listener{}
			for _, l := range r.Listeners {
				byName[l.GetName()] = l
			}
			checkPort := func(name string, want uint16, present bool) {
				l, ok := byName[name]
				if ok != present {
					t.Errorf("listener %s present = %v, want %v", name, ok, present)
					return
				}
				if ok && l.GetAddress().GetSocketAddress().GetPortValue() != uint32(want) {
					t.Errorf("listener %s port = %d, want %d", name, l.GetAddress().GetSocketAddress().GetPortValue(), want)
				}
			}
			checkPort(ListenerOutbound, c.Proxy.OutboundPort, c.Outbound.Enabled && v4)
			checkPort(ListenerOutboundIPv6, c.Proxy.OutboundPort, c.Outbound.Enabled && v6)
			checkPort(ListenerInbound, c.Proxy.InboundPort, c.Inbound.Enabled && v4)
			checkPort(ListenerInboundIPv6, c.Proxy.InboundPort, c.Inbound.Enabled && v6)

			// Service listeners: exactly the captured VIP:port of reachable services.
			var want, got []string
			for _, s := range m.Services {
				if !slices.Contains(w.Reach, s.Name) && !slices.Contains(w.Reach, ReachAll) {
					continue
				}
				for _, p := range s.Ports {
					for _, vip := range s.VirtualIPs {
						if (vip.Is4() && v4 || vip.Is6() && v6) && capturesOutbound(&c, vip, p.Port) {
							want = append(want, netip.AddrPortFrom(vip, p.Port).String())
						}
					}
				}
			}
			for _, l := range r.Listeners {
				if l.GetBindToPort() != nil && !l.GetBindToPort().GetValue() {
					got = append(got, l.GetName())
				}
			}
			slices.Sort(want)
			slices.Sort(got)
			if !slices.Equal(want, got) {
				t.Errorf("service listeners = %v, want %v", got, want)
			}

			// Inbound chains: one per captured declared port, transparent in tproxy mode.
			for _, name := range []string{ListenerInbound, ListenerInboundIPv6} {
				l, ok := byName[name]
				if !ok {
					continue
				}
				if l.GetTransparent().GetValue() != (c.Mode == "tproxy") {
					t.Errorf("listener %s transparent = %v in mode %s", name, l.GetTransparent().GetValue(), c.Mode)
				}
				var chains []string
				for _, fc := range l.GetFilterChains() {
					if p := fc.GetFilterChainMatch().GetDestinationPort(); p != nil && p.GetValue() != uint32(c.Proxy.InboundPort) {
						chains = append(chains, fmt.Sprint(p.GetValue()))
					}
				}
				var wantChains []string
				for _, p := range w.Inbound {
					if capturesInbound(&c, p.Port) {
						wantChains = append(wantChains, fmt.Sprint(p.Port))
					}
				}
				slices.Sort(wantChains)
				if !slices.Equal(chains, wantChains) {
					t.Errorf("listener %s port chains = %v, want %v", name, chains, wantChains)
				}
			}
		})
	}
}

// TestBuildMatchesEachWorkloadAlone checks that one build of the whole matrix,
// whose generator shares resources and capture answers between workloads
// with different redirect configs, serves every node what a generator of its
// own would: the same versions (content hashes of every resource).
func TestBuildMatchesEachWorkloadAlone(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, "testdata/matrix.yaml")
	b, err := buildSnapshots(m)
	if err != nil {
		t.Fatal(err)
	}
	checkBuildsAsAlone(t, m, map[string]*build{"the build": b})
}

// checkBuildsAsAlone checks that each of builds (by what it is) serves every
// workload of m the versions of its resources generated alone.
func checkBuildsAsAlone(t *testing.T, m *Mesh, builds map[string]*build) {
	t.Helper()
	for _, w := range m.Workloads {
		r, err := m.Resources(w.NodeID)
		if err != nil {
			t.Fatal(err)
		}
		alone, err := newHasher().snapshot(r)
		if err != nil {
			t.Fatal(err)
		}
		for what, b := range builds {
			if got, want := b.nodes[w.NodeID].Versions(), alone.Versions(); got != want {
				t.Errorf("node %s: versions %+v in %s, %+v generated alone", w.NodeID, got, want, what)
			}
		}
	}
}

func TestResourcesShareServiceResources(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, "testdata/matrix.yaml")
	g := newGenerator(m)
	gen := func(w *Workload) Resources {
		cfg, id := g.config(&w.TransparentProxy)
		key, part := shapeKey(w, id, nil)
		p, own := g.workload(w, cfg, key[:part], ownResources{})
		return p.with(own.Resources, Resources{})
	}
	a := gen(&m.Workloads[0]) // redirect-ipv4
	b := gen(&m.Workloads[3]) // tproxy-ipv4
	find := func(r Resources, name string) *clusterv3.Cluster {
		for _, c := range r.Clusters {
			if c.GetName() == name {
				return c
			}
		}
		t.Fatalf("no cluster %s", name)
		return nil
	}
	name := ServiceClusterName("db", 5432)
	if find(a, name) != find(b, name) {
		t.Errorf("two IPv4 workloads got distinct %s clusters; the generator must share them", name)
	}
}

func TestOutboundPolicyCatchAll(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		policy OutboundPolicy
		want   string
	}{{AllowAny, ClusterPassthrough}, {RegistryOnly, ClusterBlackhole}} {
		m := loadMesh(t, "testdata/matrix.yaml")
		m.OutboundPolicy = tt.policy
		r, err := m.Resources("redirect-ipv4")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range r.Listeners {
			if l.GetName() != ListenerOutbound {
				continue
			}
			for _, fc := range l.GetFilterChains() {
				if fc.GetName() != ChainPassthrough {
					continue
				}
				var tp tcpproxyv3.TcpProxy
				if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&tp); err != nil {
					t.Fatal(err)
				}
				if tp.GetCluster() != tt.want {
					t.Errorf("policy %s: catch-all goes to %q, want %q", tt.policy, tp.GetCluster(), tt.want)
				}
			}
		}
		hasPassthrough := slices.ContainsFunc(r.Clusters, func(c *clusterv3.Cluster) bool { return c.GetName() == ClusterPassthrough })
		if hasPassthrough != (tt.policy == AllowAny) {
			t.Errorf("policy %s: passthrough cluster present = %v", tt.policy, hasPassthrough)
		}
	}
}

// TestListenerFamilies: a workload's proxy listens on every family the
// installer can capture for its ipFamilies, whatever families its addresses
// have (docs/mesh.md, "IP families").
func TestListenerFamilies(t *testing.T) {
	t.Parallel()
	v4Only := []string{ListenerInbound, ListenerOutbound}
	v6Only := []string{ListenerInboundIPv6, ListenerOutboundIPv6}
	both := []string{ListenerInbound, ListenerInboundIPv6, ListenerOutbound, ListenerOutboundIPv6}
	tests := []struct {
		name      string
		families  string
		addresses string
		want      []string
		wantOnly4 bool // the db cluster lists only IPv4 endpoints
		wantOnly6 bool
	}{
		{name: "auto with IPv4 addresses", families: "auto", addresses: "[192.0.2.1]", want: both, wantOnly4: true},
		{name: "auto with IPv6 addresses", families: "auto", addresses: `["2001:db8::1"]`, want: both, wantOnly6: true},
		{name: "auto dual-stack", families: "auto", addresses: `[192.0.2.1, "2001:db8::1"]`, want: both},
		{name: "ipv4 on a dual-stack workload", families: "ipv4", addresses: `[192.0.2.1, "2001:db8::1"]`, want: v4Only, wantOnly4: true},
		{name: "ipv6 on a dual-stack workload", families: "ipv6", addresses: `[192.0.2.1, "2001:db8::1"]`, want: v6Only, wantOnly6: true},
		{name: "dual", families: "dual", addresses: `[192.0.2.1, "2001:db8::1"]`, want: both},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m, err := DecodeMesh([]byte(fmt.Sprintf(`
services: [{name: db, virtualIPs: [198.51.100.1, "2001:db8:5::1"], ports: [5432], endpoints: [203.0.113.1, "2001:db8:6::1"]}]
workloads: [{nodeId: w, addresses: %s, reach: ["*"], transparentProxy: {ipFamilies: %s}}]
`, tt.addresses, tt.families)))
			if err != nil {
				t.Fatal(err)
			}
			r, err := m.Resources("w")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range r.Listeners {
				if l.GetBindToPort() == nil {
					got = append(got, l.GetName())
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("listeners %v, want %v", got, tt.want)
			}
			for _, c := range r.Clusters {
				if c.GetName() != ServiceClusterName("db", 5432) {
					continue
				}
				for _, le := range c.GetLoadAssignment().GetEndpoints() {
					for _, e := range le.GetLbEndpoints() {
						a := netip.MustParseAddr(e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
						if tt.wantOnly4 && !a.Is4() || tt.wantOnly6 && !a.Is6() {
							t.Errorf("db cluster lists %s, an endpoint the workload cannot reach", a)
						}
					}
				}
			}
		})
	}
}
