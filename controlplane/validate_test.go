package controlplane

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnsv3 "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	dnsfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// baseResources is a valid node: the generator's output for one workload.
func baseResources(t *testing.T) Resources {
	t.Helper()
	return resourcesOf(t, "redirect-dual")
}

func resourcesOf(t *testing.T, node string) Resources {
	t.Helper()
	r, err := loadMesh(t, "testdata/matrix.yaml").Resources(node)
	if err != nil {
		t.Fatal(err)
	}
	// Deep copies: the cases below modify them.
	out := Resources{}
	for _, l := range r.Listeners {
		out.Listeners = append(out.Listeners, proto.Clone(l).(*listenerv3.Listener))
	}
	for _, c := range r.Clusters {
		out.Clusters = append(out.Clusters, proto.Clone(c).(*clusterv3.Cluster))
	}
	return out
}

func listenerNamed(r Resources, name string) *listenerv3.Listener {
	for _, l := range r.Listeners {
		if l.GetName() == name {
			return l
		}
	}
	return nil
}

func clusterNamed(r Resources, name string) *clusterv3.Cluster {
	for _, c := range r.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func TestCheckerAcceptsGeneratedResources(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, "testdata/matrix.yaml")
	for _, w := range m.Workloads {
		r, err := m.Resources(w.NodeID)
		if err != nil {
			t.Fatal(err)
		}
		if err := newChecker().check(w.NodeID, r); err != nil {
			t.Errorf("node %s: %v", w.NodeID, err)
		}
	}
}

func TestCheckerRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(t *testing.T, r *Resources)
		want   string
	}{
		{
			name: "missing cluster",
			mutate: func(t *testing.T, r *Resources) {
				var kept []*clusterv3.Cluster
				for _, c := range r.Clusters {
					if c.GetName() != "outbound|5432|db" {
						kept = append(kept, c)
					}
				}
				r.Clusters = kept
			},
			want: `listener 198.51.100.10:5432: references cluster "outbound|5432|db", which the snapshot does not hold`,
		},
		{
			name: "missing cluster behind an http route",
			mutate: func(t *testing.T, r *Resources) {
				c := clusterNamed(*r, "outbound|80|web")
				c.Name = "renamed"
				c.LoadAssignment.ClusterName = "renamed"
			},
			want: `references cluster "outbound|80|web"`,
		},
		{
			name: "duplicate listener name",
			mutate: func(t *testing.T, r *Resources) {
				listenerNamed(*r, ListenerInboundIPv6).Name = ListenerInbound
			},
			want: "listener inbound: name: is duplicated",
		},
		{
			name: "duplicate listener address",
			mutate: func(t *testing.T, r *Resources) {
				l := proto.Clone(listenerNamed(*r, ListenerOutbound)).(*listenerv3.Listener)
				l.Name = "another"
				r.Listeners = append(r.Listeners, l)
			},
			want: "listener another: address: TCP 0.0.0.0 15001 is also the address of listener outbound",
		},
		{
			name: "duplicate filter chain match",
			mutate: func(t *testing.T, r *Resources) {
				l := listenerNamed(*r, ListenerInbound)
				fc := proto.Clone(l.FilterChains[1]).(*listenerv3.FilterChain)
				fc.Name = "copy"
				l.FilterChains = append(l.FilterChains, fc)
			},
			want: "listener inbound: filter_chains: [3] has the same filter_chain_match as [1]",
		},
		{
			name: "two catch-all chains",
			mutate: func(t *testing.T, r *Resources) {
				l := listenerNamed(*r, ListenerOutbound)
				fc := proto.Clone(l.FilterChains[1]).(*listenerv3.FilterChain)
				fc.Name = "second"
				l.FilterChains = append(l.FilterChains, fc)
			},
			want: "has the same filter_chain_match as [1]",
		},
		{
			name: "duplicate filter chain name",
			mutate: func(t *testing.T, r *Resources) {
				l := listenerNamed(*r, ListenerOutbound)
				l.FilterChains[1].Name = l.FilterChains[0].Name
			},
			want: `name "loop-guard" is duplicated`,
		},
		{
			name: "original_dst without cluster_provided",
			mutate: func(t *testing.T, r *Resources) {
				clusterNamed(*r, ClusterPassthrough).LbPolicy = clusterv3.Cluster_ROUND_ROBIN
			},
			want: "cluster passthrough: lb_policy: ROUND_ROBIN on an ORIGINAL_DST cluster; it needs CLUSTER_PROVIDED",
		},
		{
			name: "cluster_provided on a static cluster",
			mutate: func(t *testing.T, r *Resources) {
				clusterNamed(*r, ClusterBlackhole).LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
			},
			want: "CLUSTER_PROVIDED on a STATIC cluster",
		},
		{
			name: "EDS cluster",
			mutate: func(t *testing.T, r *Resources) {
				c := clusterNamed(*r, "outbound|5432|db")
				c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
				c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}
			},
			want: "is EDS, but this control plane serves no endpoints",
		},
		{
			name: "RDS route",
			mutate: func(t *testing.T, r *Resources) {
				l := listenerNamed(*r, "198.51.100.20:80")
				l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&hcmv3.HttpConnectionManager{
					StatPrefix: "x",
					RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
						RouteConfigName: "x",
						ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
					}},
				})}
			},
			want: "uses RDS",
		},
		{
			name: "invalid typed config (empty stat prefix)",
			mutate: func(t *testing.T, r *Resources) {
				l := listenerNamed(*r, ListenerOutbound)
				l.FilterChains[1].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
					ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: ClusterPassthrough},
				})}
			},
			want: "listener outbound: filter_chains[1].filters[0].typed_config(envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy): invalid TcpProxy.StatPrefix",
		},
		{
			name: "invalid listener field",
			mutate: func(t *testing.T, r *Resources) {
				listenerNamed(*r, ListenerOutbound).Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 70000}
			},
			want: "listener outbound: invalid Listener.Address",
		},
		{
			name: "deprecated field",
			mutate: func(t *testing.T, r *Resources) {
				listenerNamed(*r, ListenerOutbound).ReusePort = true
			},
			want: "listener outbound: reuse_port: is deprecated",
		},
		{
			name: "deprecated field inside a typed config",
			mutate: func(t *testing.T, r *Resources) {
				l := listenerNamed(*r, ListenerOutbound)
				l.FilterChains[1].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
					StatPrefix:                "x",
					ClusterSpecifier:          &tcpproxyv3.TcpProxy_Cluster{Cluster: ClusterPassthrough},
					FlushAccessLogOnConnected: true,
				})}
			},
			want: "listener outbound: filter_chains[1].filters[0].typed_config(envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy).flush_access_log_on_connected: is deprecated",
		},
		{
			name: "dns answer without a listener",
			mutate: func(t *testing.T, r *Resources) {
				setDNSTable(t, listenerNamed(*r, ListenerDNS), func(tb *dnsv3.DnsTable) {
					tb.VirtualDomains[0].Endpoint.GetAddressList().Address[0] = "198.51.100.99"
				})
			},
			want: "listener dns: inline_dns_table.virtual_domains[0].endpoint.address_list.address[0]: answers cache.mesh.internal with 198.51.100.99, the address of no service listener",
		},
		{
			name: "dns domain without addresses",
			mutate: func(t *testing.T, r *Resources) {
				setDNSTable(t, listenerNamed(*r, ListenerDNSIPv6), func(tb *dnsv3.DnsTable) {
					tb.VirtualDomains[0].Endpoint.GetAddressList().Address = nil
				})
			},
			want: "listener dns-ipv6: listener_filters[0].typed_config(envoy.extensions.filters.udp.dns_filter.v3.DnsFilterConfig): invalid DnsFilterConfig.ServerConfig",
		},
		{
			name: "dns listener with a filter chain",
			mutate: func(t *testing.T, r *Resources) {
				l := listenerNamed(*r, ListenerDNS)
				l.FilterChains = []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{tcpProxyFilter(ClusterBlackhole, ClusterBlackhole)}}}
			},
			want: "listener dns: filter_chains: is set on a UDP listener",
		},
		{
			name: "use_original_dst on a listener that does not bind",
			mutate: func(t *testing.T, r *Resources) {
				listenerNamed(*r, ListenerOutbound).BindToPort = wrapperspb.Bool(false)
			},
			want: "listener outbound: use_original_dst: is set on a listener that does not bind",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			node := "redirect-dual"
			if strings.HasPrefix(tt.name, "dns") {
				node = "dns-dual"
			}
			r := resourcesOf(t, node)
			tt.mutate(t, &r)
			err := newChecker().check("n1", r)
			if err == nil {
				t.Fatal("check accepted invalid resources")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error:\n%v\nwant it to contain:\n%s", err, tt.want)
			}
			if !strings.Contains(err.Error(), `node "n1"`) {
				t.Errorf("error %v does not name the node", err)
			}
			if !errors.Is(err, ErrInvalidResources) {
				t.Errorf("error does not match ErrInvalidResources")
			}
		})
	}
}

// TestConsistentRunsOnEveryDistinctResource checks the Snapshot.Consistent
// wiring on its own: the checker refuses RDS earlier, so a build never gets
// here with one, but a listener that names a route must still fail.
func TestConsistentRunsOnEveryDistinctResource(t *testing.T) {
	t.Parallel()
	r := baseResources(t)
	l := listenerNamed(r, "198.51.100.20:80")
	l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&hcmv3.HttpConnectionManager{
		StatPrefix: "x",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: "web-routes",
			ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		}},
	})}
	h := newHasher()
	if _, err := h.snapshot(r); err != nil {
		t.Fatal(err)
	}
	if err := h.consistent(); err == nil || !strings.Contains(err.Error(), "web-routes") {
		t.Errorf("consistent() = %v, want an error about the route web-routes", err)
	}
	h = newHasher()
	if _, err := h.snapshot(baseResources(t)); err != nil {
		t.Fatal(err)
	}
	if err := h.consistent(); err != nil {
		t.Errorf("consistent() on generated resources = %v", err)
	}
}

// setDNSTable changes the inline table of a DNS listener's dns_filter.
func setDNSTable(t *testing.T, l *listenerv3.Listener, change func(*dnsv3.DnsTable)) {
	t.Helper()
	f := l.GetListenerFilters()[0]
	cfg := &dnsfilterv3.DnsFilterConfig{}
	if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	change(cfg.GetServerConfig().GetInlineDnsTable())
	f.ConfigType = &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(cfg)}
}

// TestCheckerReportsSharedPartsForEveryNode: the checker remembers the
// shared parts (filter chains, typed configs) it found valid, by pointer; an
// invalid one must still fail every node that holds it, each error naming
// its node and path, and a valid one must not hide an invalid part of the
// next listener that holds it.
func TestCheckerReportsSharedPartsForEveryNode(t *testing.T) {
	t.Parallel()
	const want = "filter_chains[0].use_proxy_proto: is deprecated"
	tests := []struct {
		name    string
		invalid bool // the shared chain itself
	}{
		{name: "invalid shared chain", invalid: true},
		{name: "valid shared chain, invalid own chain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r1, r2 := baseResources(t), baseResources(t)
			in1, in2 := listenerNamed(r1, ListenerInbound), listenerNamed(r2, ListenerInbound)
			in2.FilterChains[0] = in1.FilterChains[0] // shared, as the generator shares chains
			if tt.invalid {
				in1.FilterChains[0].UseProxyProto = wrapperspb.Bool(true)
			} else {
				in2.FilterChains[1].UseProxyProto = wrapperspb.Bool(true)
			}
			c := newChecker()
			err1, err2 := c.check("n1", r1), c.check("n2", r2)
			if tt.invalid {
				if err1 == nil || !strings.Contains(err1.Error(), `node "n1"`) || !strings.Contains(err1.Error(), want) {
					t.Errorf("n1: %v, want an error of node n1 containing %q", err1, want)
				}
			} else if err1 != nil {
				t.Errorf("n1: %v, want no error", err1)
			}
			want2 := want
			if !tt.invalid {
				want2 = "filter_chains[1].use_proxy_proto: is deprecated"
			}
			if err2 == nil || !strings.Contains(err2.Error(), `node "n2"`) || !strings.Contains(err2.Error(), want2) {
				t.Errorf("n2: %v, want an error of node n2 containing %q", err2, want2)
			}
		})
	}
}

// splitResources returns the outbound part and the own resources the
// generator makes for node, deep copies: the cases below modify them.
func splitResources(t *testing.T, node string) (part, own Resources) {
	t.Helper()
	m := loadMesh(t, "testdata/matrix.yaml")
	w, ok := m.workload(node)
	if !ok {
		t.Fatalf("no workload %s", node)
	}
	g := newGenerator(m)
	cfg, id := g.config(&w.TransparentProxy)
	key, n := shapeKey(w, id, nil)
	p, o := g.workload(w, cfg, key[:n], ownResources{})
	clone := func(r Resources) Resources {
		var out Resources
		for _, l := range r.Listeners {
			out.Listeners = append(out.Listeners, proto.Clone(l).(*listenerv3.Listener))
		}
		for _, c := range r.Clusters {
			out.Clusters = append(out.Clusters, proto.Clone(c).(*clusterv3.Cluster))
		}
		return out
	}
	return clone(p.Resources), clone(o.Resources)
}

// errorLines are the lines of err (errors.Join puts one error a line),
// sorted; nil for none.
func errorLines(err error) []string {
	if err == nil {
		return nil
	}
	lines := strings.Split(err.Error(), "\n")
	slices.Sort(lines)
	return lines
}

// The checker checks an outbound part once for every node served it, and
// each node's own resources against it: a node must pass or fail, with the
// same errors, as if its resources were checked whole — also where a failure
// of the part is resolved by the node's own resources, or only shows with
// them.
func TestCheckerPartWithOwnAsWhole(t *testing.T) {
	t.Parallel()
	take := func(list *[]*listenerv3.Listener, name string) *listenerv3.Listener {
		i := slices.IndexFunc(*list, func(l *listenerv3.Listener) bool { return l.GetName() == name })
		if i < 0 {
			t.Fatalf("no listener %s", name)
		}
		l := (*list)[i]
		*list = slices.Delete(*list, i, i+1)
		return l
	}
	takeCluster := func(list *[]*clusterv3.Cluster, name string) *clusterv3.Cluster {
		i := slices.IndexFunc(*list, func(c *clusterv3.Cluster) bool { return c.GetName() == name })
		if i < 0 {
			t.Fatalf("no cluster %s", name)
		}
		c := (*list)[i]
		*list = slices.Delete(*list, i, i+1)
		return c
	}
	tests := []struct {
		name    string
		mutate  func(part, own *Resources)
		wantErr string // "" for none
	}{
		{name: "generated", mutate: func(part, own *Resources) {}},
		{
			name: "own cluster with a part cluster's name",
			mutate: func(part, own *Resources) {
				own.Clusters = append(own.Clusters, proto.Clone(clusterNamed(*part, ClusterBlackhole)).(*clusterv3.Cluster))
			},
			wantErr: "cluster blackhole: name: is duplicated",
		},
		{
			name: "own listener with a part listener's name",
			mutate: func(part, own *Resources) {
				listenerNamed(*own, ListenerInbound).Name = ListenerDNS
			},
			wantErr: "listener dns: name: is duplicated",
		},
		{
			name: "own listener at a part listener's address",
			mutate: func(part, own *Resources) {
				// Of a listener whose name sorts first, so that the
				// whole names the same one of the two as the part and own.
				listenerNamed(*own, ListenerInbound).Address = socketAddress(netip.MustParseAddr("198.51.100.10"), 5432)
			},
			wantErr: "listener inbound: address: TCP 198.51.100.10 5432 is also the address of listener 198.51.100.10:5432",
		},
		{
			name: "a part listener's cluster among the node's own",
			mutate: func(part, own *Resources) {
				own.Clusters = append(own.Clusters, takeCluster(&part.Clusters, "outbound|5432|db"))
			},
		},
		{
			name: "a part listener's cluster nowhere",
			mutate: func(part, own *Resources) {
				takeCluster(&part.Clusters, "outbound|5432|db")
			},
			wantErr: `listener 198.51.100.10:5432: references cluster "outbound|5432|db", which the snapshot does not hold`,
		},
		{
			name: "an own listener's cluster missing from the part",
			mutate: func(part, own *Resources) {
				takeCluster(&part.Clusters, ClusterBlackhole)
			},
			wantErr: `listener inbound: references cluster "blackhole", which the snapshot does not hold`,
		},
		{
			name: "a DNS answer served by the node's own listener",
			mutate: func(part, own *Resources) {
				own.Listeners = append(own.Listeners, take(&part.Listeners, "198.51.100.10:5432"))
			},
		},
		{
			name: "a DNS answer served nowhere",
			mutate: func(part, own *Resources) {
				take(&part.Listeners, "198.51.100.10:5432")
			},
			wantErr: "answers db.mesh.internal with 198.51.100.10, the address of no service listener of the snapshot",
		},
		{
			name: "an invalid part listener",
			mutate: func(part, own *Resources) {
				listenerNamed(*part, ListenerOutbound).FilterChains[0].UseProxyProto = wrapperspb.Bool(true)
			},
			wantErr: "listener outbound: filter_chains[0].use_proxy_proto: is deprecated",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			part, own := splitResources(t, "dns-dual")
			tt.mutate(&part, &own)
			sortByName(own.Listeners)
			sortByName(own.Clusters)
			p := &outboundPart{Resources: part}
			got := newChecker().checkNode("n1", p, ownResources{Resources: own})
			whole := newChecker().check("n1", p.with(own, Resources{}))
			if !slices.Equal(errorLines(got), errorLines(whole)) {
				t.Errorf("part and own: %v\nchecked whole: %v", got, whole)
			}
			if tt.wantErr == "" {
				if got != nil {
					t.Errorf("error %v, want none", got)
				}
				return
			}
			if got == nil || !strings.Contains(got.Error(), `node "n1"`) || !strings.Contains(got.Error(), tt.wantErr) {
				t.Errorf("error %v, want one of node n1 containing %q", got, tt.wantErr)
			}
		})
	}
}

// A part is checked once for every node of a build: what it found must
// fail every node that does not resolve it, each error naming its node,
// whichever node came first.
func TestCheckerPartFailsEveryNode(t *testing.T) {
	t.Parallel()
	part, own := splitResources(t, "dns-dual")
	// The part lacks db's cluster: a node that holds it passes, the others
	// fail.
	i := slices.IndexFunc(part.Clusters, func(c *clusterv3.Cluster) bool { return c.GetName() == "outbound|5432|db" })
	db := part.Clusters[i]
	part.Clusters = slices.Delete(part.Clusters, i, i+1)
	p := &outboundPart{Resources: part}
	withDB := Resources{Listeners: own.Listeners, Clusters: append(slices.Clone(own.Clusters), db)}
	sortByName(withDB.Clusters)
	c := newChecker()
	for _, n := range []struct {
		node string
		own  Resources
		fail bool
	}{{"n1", withDB, false}, {"n2", own, true}, {"n3", withDB, false}, {"n4", own, true}} {
		err := c.checkNode(n.node, p, ownResources{Resources: n.own})
		if !n.fail {
			if err != nil {
				t.Errorf("%s holds the cluster: %v", n.node, err)
			}
			continue
		}
		const want = `references cluster "outbound|5432|db"`
		if err == nil || !strings.Contains(err.Error(), `node "`+n.node+`"`) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error of node %s containing %q", n.node, err, n.node, want)
		}
	}
	if len(c.parts) != 1 {
		t.Errorf("the part was checked %d times, want once", len(c.parts))
	}
}

// A build hands out the previous build's memo entries for a workload's own
// resources it would make again: the checker checks them against the
// node's other resources by what the entries record (name, address, cluster
// references), as it checks the resources themselves.
func TestCheckerMemoEntries(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, "testdata/matrix.yaml")
	b, err := buildSnapshots(m)
	if err != nil {
		t.Fatal(err)
	}
	// The resources of redirect-dual in a build from b's memo.
	own := func(t *testing.T) (*outboundPart, ownResources) {
		g := newGenerator(m)
		g.prev = b.memo
		w, _ := m.workload("redirect-dual")
		cfg, id := g.config(&w.TransparentProxy)
		key, n := shapeKey(w, id, nil)
		p, o := g.workload(w, cfg, key[:n], ownResources{})
		if len(o.Listeners)+len(o.Clusters) != 0 || len(o.memo) == 0 {
			t.Fatalf("own resources %d, memo entries %d: want only entries", len(o.Listeners)+len(o.Clusters), len(o.memo))
		}
		return p, o
	}
	entry := func(o ownResources, name string) int {
		i := slices.IndexFunc(o.memo, func(e *memoEntry) bool { return e.name == name })
		if i < 0 {
			t.Fatalf("no entry %s", name)
		}
		return i
	}
	tests := []struct {
		name    string
		mutate  func(o *ownResources)
		wantErr string
	}{
		{name: "as made", mutate: func(o *ownResources) {}},
		{
			name: "a cluster an entry refers to missing",
			mutate: func(o *ownResources) {
				i := entry(*o, ClusterInboundPassthroughIPv4)
				o.memo = slices.Delete(o.memo, i, i+1)
			},
			wantErr: `listener inbound: references cluster "inbound-passthrough-ipv4", which the snapshot does not hold`,
		},
		{
			name: "a listener with an entry's name",
			mutate: func(o *ownResources) {
				l := proto.Clone(listenerNamed(baseResources(t), ListenerInbound)).(*listenerv3.Listener)
				l.Address = socketAddress(netip.MustParseAddr("192.0.2.11"), 15006)
				o.Listeners = append(o.Listeners, l)
			},
			wantErr: "listener inbound: name: is duplicated",
		},
		{
			name: "a listener at an entry's address",
			mutate: func(o *ownResources) {
				l := proto.Clone(listenerNamed(baseResources(t), ListenerInbound)).(*listenerv3.Listener)
				l.Name = "another"
				o.Listeners = append(o.Listeners, l)
			},
			wantErr: "address: TCP 0.0.0.0 15006 is also the address of listener",
		},
		{
			name: "a cluster with an entry's name",
			mutate: func(o *ownResources) {
				o.Clusters = append(o.Clusters, proto.Clone(clusterNamed(baseResources(t), ClusterInboundPassthroughIPv6)).(*clusterv3.Cluster))
			},
			wantErr: "cluster inbound-passthrough-ipv6: name: is duplicated",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, o := own(t)
			tt.mutate(&o)
			err := newChecker().checkNode("n1", p, o)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("error %v, want none", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), `node "n1"`) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %v, want one of node n1 containing %q", err, tt.wantErr)
			}
		})
	}
}
