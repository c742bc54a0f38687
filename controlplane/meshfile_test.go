package controlplane

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnsfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	caresv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/network/dns_resolver/cares/v3"
	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/redirect"
)

var cmpNetip = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func TestDecodeMesh(t *testing.T) {
	t.Parallel()
	doc := `
outboundPolicy: registry-only
transparentProxy:
  proxy: {uid: 1337}
  outbound: {excludePorts: [22]}
services:
  - name: db
    virtualIPs: [198.51.100.10, "2001:db8::10"]
    ports:
      - {name: pg, port: 5432, targetPort: 6432}
      - {port: 80, protocol: HTTP}
    selector: {app: db}
    endpoints:
      - 203.0.113.1
      - {address: 203.0.113.2, targetPorts: {pg: 7432}}
  - name: short
    virtualIPs: [198.51.100.11]
    ports: [443]
workloads:
  - nodeId: web-1
    addresses: [192.0.2.1]
    labels: {app: web, tier: "1"}
    inbound: [8080, {port: 9090, appPort: 19090, protocol: http}]
    reach: [db]
    transparentProxy:
      mode: tproxy
      outbound: {excludeCIDRs: [192.0.2.0/24]}
  - nodeId: db-1
    addresses: [192.0.2.2]
    labels: {app: db}
`
	m, err := DecodeMesh([]byte(doc))
	if err != nil {
		t.Fatalf("DecodeMesh: %v", err)
	}
	// The workload's config is exactly what `detour install` would build from
	// the same two documents.
	web := redirect.Default()
	for _, d := range []string{"proxy: {uid: 1337}\noutbound: {excludePorts: [22]}", "mode: tproxy\noutbound: {excludeCIDRs: [192.0.2.0/24]}"} {
		if err := web.Decode([]byte(d)); err != nil {
			t.Fatal(err)
		}
	}
	db := redirect.Default()
	if err := db.Decode([]byte("proxy: {uid: 1337}\noutbound: {excludePorts: [22]}")); err != nil {
		t.Fatal(err)
	}
	want := &Mesh{
		OutboundPolicy: RegistryOnly,
		Services: []Service{
			{
				Name:       "db",
				VirtualIPs: []netip.Addr{netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("2001:db8::10")},
				Ports: []ServicePort{
					{Name: "pg", Port: 5432, TargetPort: 6432, Protocol: ProtocolTCP},
					{Name: "80", Port: 80, TargetPort: 80, Protocol: ProtocolHTTP},
				},
				Selector: map[string]string{"app": "db"},
				Endpoints: []Endpoint{
					{Address: netip.MustParseAddr("203.0.113.1")},
					{Address: netip.MustParseAddr("203.0.113.2"), TargetPorts: map[string]uint16{"pg": 7432}},
				},
			},
			{
				Name:       "short",
				VirtualIPs: []netip.Addr{netip.MustParseAddr("198.51.100.11")},
				Ports:      []ServicePort{{Name: "443", Port: 443, TargetPort: 443, Protocol: ProtocolTCP}},
			},
		},
		Workloads: []Workload{
			{
				NodeID:           "web-1",
				Addresses:        []netip.Addr{netip.MustParseAddr("192.0.2.1")},
				Labels:           map[string]string{"app": "web", "tier": "1"},
				Inbound:          []InboundPort{{Port: 8080, AppPort: 8080, Protocol: ProtocolTCP}, {Port: 9090, AppPort: 19090, Protocol: ProtocolHTTP}},
				Reach:            []string{"db"},
				TransparentProxy: web,
			},
			{
				NodeID:           "db-1",
				Addresses:        []netip.Addr{netip.MustParseAddr("192.0.2.2")},
				Labels:           map[string]string{"app": "db"},
				TransparentProxy: db,
			},
		},
	}
	if diff := cmp.Diff(want, m, cmpNetip); diff != "" {
		t.Errorf("mesh (-want +got):\n%s", diff)
	}
}

func TestDecodeMeshErrors(t *testing.T) {
	t.Parallel()
	const svc = "services: [{name: a, virtualIPs: [198.51.100.1], ports: [80]}]\n"
	const wl = "workloads: [{nodeId: w, addresses: [192.0.2.1]"
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"malformed yaml", "services: [", []string{`(document): `, "is not valid YAML or JSON"}},
		{"duplicate key", "outboundPolicy: allow-any\noutboundPolicy: registry-only", []string{`(document): `, `key \"outboundPolicy\" already set in map" is not valid YAML or JSON`}},
		{"duplicate nested key", "workloads: [{nodeId: w, nodeId: v, addresses: [192.0.2.1]}]", []string{`key \"nodeId\" already set in map`}},
		{"not a mapping", "[1, 2]", []string{`(document): "[1,2]" is not a mapping`}},
		// YAML to JSON kept the first document and dropped the second's
		// services and workloads silently.
		{"two documents", svc + "---\n" + wl + "}]\n", []string{`(document): "---" starts another YAML document (2 hold settings); a mesh file is one document`}},
		{"unknown top-level key", "servics: []", []string{`servics: "[]" is not a known field (one of outboundPolicy, allowMassRemoval, dns, transparentProxy, services, workloads)`}},
		{"unknown policy", "outboundPolicy: deny", []string{`outboundPolicy: "deny" is not one of allow-any, registry-only`}},
		{"port out of range", "services: [{name: a, virtualIPs: [198.51.100.1], ports: [{port: 70000}]}]", []string{`services[0].ports[0].port: "70000" is not a port (1-65535)`}},
		{"port missing", "services: [{name: a, virtualIPs: [198.51.100.1], ports: [{protocol: tcp}]}]", []string{`services[0].ports[0].port: "" is missing`}},
		{"bad vip", "services: [{name: a, virtualIPs: [198.51.100.300], ports: [80]}]", []string{`services[0].virtualIPs[0]: "198.51.100.300" is not an IP address`}},
		{"loopback vip", "services: [{name: a, virtualIPs: [127.0.0.1], ports: [80]}]", []string{`services[0].virtualIPs[0]: "127.0.0.1" is not a routable unicast address`}},
		{"repeated vip", "services: [{name: a, virtualIPs: [198.51.100.10, 2001:db8::a, 198.51.100.10], ports: [80]}]", []string{`services[0].virtualIPs[2]: "198.51.100.10" is also services[0].virtualIPs[0]`}},
		{"no vip", "services: [{name: a, ports: [80]}]", []string{`services[0].virtualIPs: "" is empty`}},
		{"udp", "services: [{name: a, virtualIPs: [198.51.100.1], ports: [{port: 53, protocol: udp}]}]", []string{`services[0].ports[0].protocol: "udp" is not one of tcp, http`}},
		{"unknown service key", "services: [{name: a, vips: [198.51.100.1]}]", []string{`services[0].vips: "[\"198.51.100.1\"]" is not a known field`}},
		{"bad service name", "services: [{name: 'a b', virtualIPs: [198.51.100.1], ports: [80]}]", []string{`services[0].name: "a b" has ' '`}},
		{"duplicate service", "services: [{name: a, virtualIPs: [198.51.100.1], ports: [80]}, {name: a, virtualIPs: [198.51.100.2], ports: [80]}]", []string{`services[1].name: "a" is also the name of services[0]`}},
		{"vip port conflict", "services: [{name: a, virtualIPs: [198.51.100.1], ports: [80]}, {name: b, virtualIPs: [198.51.100.1], ports: [80]}]", []string{`services[1].ports[0].port: "80" on 198.51.100.1 is also served by service "a"`}},
		{"unknown target port name", "services: [{name: a, virtualIPs: [198.51.100.1], ports: [80], endpoints: [{address: 203.0.113.1, targetPorts: {http: 8080}}]}]", []string{`services[0].endpoints[0].targetPorts.http: "8080" names no port of this service`}},
		{"workload transparentProxy", svc + wl + ", transparentProxy: {outbound: {excludePorts: [80, 70000]}}}]", []string{`workloads[0].transparentProxy.outbound.excludePorts[1]: "70000" is not a port`}},
		{"mesh transparentProxy", svc + "transparentProxy: {mode: bounce}\n" + wl + "}]", []string{`transparentProxy.mode: "bounce" is not one of redirect, tproxy`}},
		{"transparentProxy conflict", svc + wl + ", transparentProxy: {proxy: {inboundPort: 15001}}}]", []string{`workloads[0].transparentProxy.proxy.outboundPort: "15001" is also proxy.inboundPort`}},
		{"unknown reach", svc + wl + ", reach: [b]}]", []string{`workloads[0].reach[0]: "b" is not the name of a service`}},
		{"dual without ipv6", svc + wl + ", transparentProxy: {ipFamilies: dual}}]", []string{`workloads[0].transparentProxy.ipFamilies: "dual" needs an IPv6 address in workloads[0].addresses`}},
		{"dual without ipv4", svc + "workloads: [{nodeId: w, addresses: [\"2001:db8::1\"], transparentProxy: {ipFamilies: dual}}]", []string{`workloads[0].transparentProxy.ipFamilies: "dual" needs an IPv4 address in workloads[0].addresses`}},
		{"ipv6 without ipv6", svc + wl + ", transparentProxy: {ipFamilies: ipv6}}]", []string{`workloads[0].transparentProxy.ipFamilies: "ipv6" needs an IPv6 address in workloads[0].addresses`}},
		// YAML reads an unquoted number with a leading zero as octal: the
		// mesh served port 291 and gave pods proxy uid 735 (their Envoy's own
		// traffic then looped), as the CLI config refuses it.
		{"port with a leading zero", "services: [{name: a, virtualIPs: [198.51.100.1], ports: [80, 0443]}]", []string{`services[0].ports[1]: "0443" has a leading zero, which YAML reads as octal (291)`}},
		{"proxy uid with a leading zero", svc + wl + ", transparentProxy: {proxy: {uid: 01337}}}]", []string{`workloads[0].transparentProxy.proxy.uid: "01337" has a leading zero, which YAML reads as octal (735)`}},
		{"mesh proxy uid with a leading zero", svc + "transparentProxy:\n  proxy:\n    uid: 01337\n" + wl + "}]", []string{`transparentProxy.proxy.uid: "01337" has a leading zero`}},
		{"dns suffix", "dns: {suffix: -mesh}", []string{`dns.suffix: "-mesh" has label "-mesh", which starts or ends with '-'`}},
		{"dns suffix label", "dns: {suffix: a..b}", []string{`dns.suffix: "a..b" is not a DNS name`}},
		// An empty suffix written on purpose is refused, as --dns-suffix "" is:
		// it served every name under the default "mesh".
		{"empty dns suffix", "dns: {suffix: ''}", []string{`dns.suffix: "" is empty; leave the key out for the default suffix mesh`}},
		{"root dns suffix", "dns: {suffix: .}", []string{`dns.suffix: "." is empty; leave the key out for the default suffix mesh`}},
		{"dns upstream", "dns: {upstreams: [192.0.2.53, ns1]}", []string{`dns.upstreams[1]: "ns1" is not an IP address or address:port`}},
		{"dns upstream unusable", "dns: {upstreams: [192.0.2.53, \"0.0.0.0\", \"192.0.2.53:0\"]}", []string{
			`dns.upstreams[1]: "0.0.0.0:53" is not a routable unicast address`,
			`dns.upstreams[2]: "192.0.2.53:0" has no port`}},
		// The proxy's own DNS listener as the upstream: every name that is not
		// a service would be forwarded to itself, again and again.
		{"dns upstream is the dns listener", "dns: {upstreams: [\"127.0.0.1:15053\", \"[::1]:15053\"]}\n" + svc + wl + ", transparentProxy: {dns: {capture: all}}}]", []string{
			`dns.upstreams[0]: "127.0.0.1:15053" is the DNS listener of workloads[0] (w) itself (transparentProxy.dns.port 15053): its queries would loop`,
			`dns.upstreams[1]: "[::1]:15053" is the DNS listener of workloads[0] (w) itself`}},
		// An upstream of a family the workload cannot reach fails every
		// name outside the mesh; a workload with none it can reach is refused.
		{"dns upstreams ipv4 only, workload ipv6 only", "dns: {upstreams: [192.0.2.53]}\n" + svc + "workloads: [{nodeId: v6, addresses: [\"2001:db8::1\"], transparentProxy: {dns: {capture: all}}}]", []string{
			`dns.upstreams: "192.0.2.53:53" has no upstream workloads[0] (v6) can reach: it reaches IPv6 only (its addresses and ipFamilies), so with transparentProxy.dns.capture all every name outside the mesh would fail; add an IPv6 upstream`}},
		{"dns upstreams ipv6 only, workload ipv4 only", "dns: {upstreams: [\"2001:db8::53\"]}\n" + svc + wl + ", transparentProxy: {ipFamilies: ipv4, dns: {capture: resolvconf}}}]", []string{
			`dns.upstreams: "[2001:db8::53]:53" has no upstream workloads[0] (w) can reach: it reaches IPv4 only (its addresses and ipFamilies), so with transparentProxy.dns.capture resolvconf every name outside the mesh would fail; add an IPv4 upstream`}},
		// A service name a capturing workload's DNS table would hold but no
		// query could ask for.
		{"service name not a dns name", "services: [{name: my_db, virtualIPs: [198.51.100.1], ports: [80]}]\n" + wl + ", reach: [my_db], transparentProxy: {dns: {capture: all}}}]", []string{
			`services[0].name: "my_db" would be in the DNS table of workloads[0] (w) (transparentProxy.dns.capture all), but no query can ask for it: my_db.mesh has '_'; a DNS name has letters, digits, '-' and '.'`}},
		{"service name label too long", "services: [{name: " + strings.Repeat("a", 64) + ", virtualIPs: [198.51.100.1], ports: [80]}]\n" + wl + ", reach: [\"*\"], transparentProxy: {dns: {capture: resolvconf}}}]", []string{
			`services[0].name: "` + strings.Repeat("a", 64) + `" would be in the DNS table of workloads[0] (w) (transparentProxy.dns.capture resolvconf), but no query can ask for it: ` + strings.Repeat("a", 64) + `.mesh is not a DNS name (labels of 1 to 63 characters`}},
		{"service name too long with the suffix", "dns: {suffix: " + strings.Repeat("s", 60) + "}\nservices: [{name: " + strings.Repeat("a.", 100) + "b, virtualIPs: [198.51.100.1], ports: [80]}]\n" + wl + ", reach: [\"*\"], transparentProxy: {dns: {capture: all}}}]", []string{
			`services[0].name: "a.a.a.`, `would be in the DNS table of workloads[0] (w) (transparentProxy.dns.capture all), but no query can ask for it: ` + strings.Repeat("a.", 100) + "b." + strings.Repeat("s", 60) + ` is longer than 253 characters`}},
		// DNS names are case-insensitive: backend.mesh answered both
		// services' virtual IPs, spreading one name over two services.
		{"service names differing only in case", "services: [{name: Backend, virtualIPs: [198.51.100.1], ports: [80]}, {name: backend, virtualIPs: [198.51.100.2], ports: [80]}]\n" + wl + ", reach: [\"*\"], transparentProxy: {dns: {capture: all}}}]", []string{
			`services[1].name: "backend" would share the name backend.mesh with services[0] (Backend) in the DNS table of workloads[0] (w) (transparentProxy.dns.capture all): DNS names are case-insensitive, and the name would answer both services' virtual IPs`}},
		{"dns key", "dns: {ttl: 5}", []string{`dns.ttl: "5" is not a known field (one of suffix, upstreams)`}},
		{"inbound on a proxy port", svc + wl + ", inbound: [15001]}]", []string{`workloads[0].inbound[0].port: "15001" is one of the proxy's own ports`}},
		{"app port on a proxy port", svc + wl + ", inbound: [{port: 80, appPort: 15006}]}]", []string{`workloads[0].inbound[0].appPort: "15006" is one of the proxy's own ports`}},
		{"duplicate node", svc + "workloads: [{nodeId: w, addresses: [192.0.2.1]}, {nodeId: w, addresses: [192.0.2.2]}]", []string{`workloads[1].nodeId: "w" is also the node id of workloads[0]`}},
		{"no address", svc + "workloads: [{nodeId: w}]", []string{`workloads[0].addresses: "" is empty`}},
		{"no node id", svc + "workloads: [{addresses: [192.0.2.1]}]", []string{`workloads[0].nodeId: "" is not a node id`}},
		{"label not a string", svc + wl + ", labels: {a: [1]}}]", []string{`workloads[0].labels.a: "[1]" is not a label value`}},
		{
			"every error at once", "outboundPolicy: deny\nservices: [{name: a, virtualIPs: [bad], ports: [0]}]",
			[]string{`outboundPolicy: "deny"`, `services[0].virtualIPs[0]: "bad"`, `services[0].ports[0]: "0" is not a port`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodeMesh([]byte(tt.doc))
			if err == nil {
				t.Fatal("DecodeMesh accepted an invalid mesh")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain:\n%s", err, w)
				}
			}
			if !errors.Is(err, redirect.ErrInvalid) {
				t.Errorf("error does not match redirect.ErrInvalid")
			}
		})
	}
}

// TestDecodeMeshDNSLoopbackUpstream: a resolver on loopback is fine as long
// as it is not the workload's own DNS listener (or DNS is not captured).
func TestDecodeMeshDNSLoopbackUpstream(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{
		"dns: {upstreams: [127.0.0.1, \"127.0.0.53\", \"127.0.0.1:15054\"]}\nworkloads: [{nodeId: w, addresses: [192.0.2.1], transparentProxy: {dns: {capture: all}}}]",
		"dns: {upstreams: [\"127.0.0.1:15053\"]}\nworkloads: [{nodeId: w, addresses: [192.0.2.1]}]",
		"dns: {upstreams: [\"127.0.0.1:15053\"]}\nworkloads: [{nodeId: w, addresses: [192.0.2.1], transparentProxy: {dns: {capture: all, port: 15054}}}]",
	} {
		if _, err := DecodeMesh([]byte(doc)); err != nil {
			t.Errorf("DecodeMesh(%q) = %v", doc, err)
		}
	}
}

// TestDNSUpstreamsFollowFamilies: each workload's DNS listener forwards only
// to the mesh's upstreams it can reach (its families, and loopback); a
// workload whose DNS is not captured is not held to it.
func TestDNSUpstreamsFollowFamilies(t *testing.T) {
	t.Parallel()
	m, err := DecodeMesh([]byte(`
dns: {upstreams: [192.0.2.53, "[2001:db8::53]:5353", "127.0.0.53"]}
services: [{name: db, virtualIPs: [198.51.100.1, "2001:db8:5::1"], ports: [5432]}]
workloads:
  - {nodeId: v4, addresses: [192.0.2.1], transparentProxy: {dns: {capture: all}}}
  - {nodeId: v6, addresses: ["2001:db8::1"], transparentProxy: {dns: {capture: all}}}
  - {nodeId: dual, addresses: [192.0.2.2, "2001:db8::2"], transparentProxy: {dns: {capture: all}}}
  - {nodeId: dual-as-v6, addresses: [192.0.2.3, "2001:db8::3"], transparentProxy: {ipFamilies: ipv6, dns: {capture: all}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"v4":         {"192.0.2.53:53", "127.0.0.53:53"},
		"v6":         {"[2001:db8::53]:5353", "127.0.0.53:53"},
		"dual":       {"192.0.2.53:53", "[2001:db8::53]:5353", "127.0.0.53:53"},
		"dual-as-v6": {"[2001:db8::53]:5353", "127.0.0.53:53"},
	}
	for node, w := range want {
		r, err := m.Resources(node)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, l := range r.Listeners {
			if l.GetName() != ListenerDNS && l.GetName() != ListenerDNSIPv6 {
				continue
			}
			n++
			if got := dnsResolvers(t, l); !slices.Equal(got, w) {
				t.Errorf("%s: listener %s forwards to %v, want %v", node, l.GetName(), got, w)
			}
		}
		if n == 0 {
			t.Errorf("%s: no DNS listener", node)
		}
	}
	// No address: that is the error, not the upstreams.
	if _, err := DecodeMesh([]byte("dns: {upstreams: [192.0.2.53]}\nworkloads: [{nodeId: w, transparentProxy: {dns: {capture: all}}}]")); err == nil ||
		strings.Contains(err.Error(), "dns.upstreams") || !strings.Contains(err.Error(), `workloads[0].addresses: "" is empty`) {
		t.Errorf("a workload without addresses: %v, want only the addresses error", err)
	}
	// Not captured: no DNS listener, nothing to refuse.
	if _, err := DecodeMesh([]byte("dns: {upstreams: [192.0.2.53]}\nworkloads: [{nodeId: v6, addresses: [\"2001:db8::1\"]}]")); err != nil {
		t.Errorf("a workload without DNS capture was refused: %v", err)
	}
}

// TestServiceNamesOutsideDNS: a service name DNS cannot carry is fine where
// no capturing workload's DNS table would hold it: Envoy resource names take
// '_' and long names.
func TestServiceNamesOutsideDNS(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 64)
	for _, doc := range []string{
		"services: [{name: my_db, virtualIPs: [198.51.100.1], ports: [80]}]\nworkloads: [{nodeId: w, addresses: [192.0.2.1], reach: [\"*\"]}]",
		"services: [{name: " + long + ", virtualIPs: [198.51.100.1], ports: [80]}]\nworkloads: [{nodeId: w, addresses: [192.0.2.1], reach: [\"*\"], transparentProxy: {dns: {capture: off}}}]",
		// Captures DNS, but does not reach my_db: not in its table.
		"services: [{name: my_db, virtualIPs: [198.51.100.1], ports: [80]}, {name: web, virtualIPs: [198.51.100.2], ports: [80]}]\nworkloads: [{nodeId: w, addresses: [192.0.2.1], reach: [web], transparentProxy: {dns: {capture: all}}}]",
		// Names differing in case are two Envoy clusters; only a DNS table
		// holding both cannot tell them apart.
		"services: [{name: Backend, virtualIPs: [198.51.100.1], ports: [80]}, {name: backend, virtualIPs: [198.51.100.2], ports: [80]}]\nworkloads: [{nodeId: w, addresses: [192.0.2.1], reach: [\"*\"]}, {nodeId: v, addresses: [192.0.2.2], reach: [backend], transparentProxy: {dns: {capture: all}}}]",
	} {
		if _, err := DecodeMesh([]byte(doc)); err != nil {
			t.Errorf("DecodeMesh(%q) = %v", doc, err)
		}
	}
}

func dnsResolvers(t *testing.T, l *listenerv3.Listener) []string {
	t.Helper()
	for _, f := range l.GetListenerFilters() {
		cfg := &dnsfilterv3.DnsFilterConfig{}
		if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
			t.Fatal(err)
		}
		cares := &caresv3.CaresDnsResolverConfig{}
		if err := cfg.GetClientConfig().GetTypedDnsResolverConfig().GetTypedConfig().UnmarshalTo(cares); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range cares.GetResolvers() {
			sa := a.GetSocketAddress()
			out = append(out, netip.AddrPortFrom(netip.MustParseAddr(sa.GetAddress()), uint16(sa.GetPortValue())).String())
		}
		return out
	}
	t.Fatalf("listener %s has no listener filter", l.GetName())
	return nil
}

func TestDecodeExampleMeshes(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"testdata/matrix.yaml", "../examples/mesh.yaml"} {
		m, err := LoadMesh(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if _, err := buildSnapshots(m); err != nil {
			t.Errorf("%s: build: %v", path, err)
		}
	}
}
