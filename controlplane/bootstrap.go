package controlplane

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unicode"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	"github.com/detour-mesh/detour/redirect"
)

// BootstrapOptions describe the Envoy bootstrap of one workload.
type BootstrapOptions struct {
	// NodeID is the node.id the proxy presents; required.
	NodeID string
	// Cluster is node.cluster; "" means "detour".
	Cluster string
	// ControlPlane is the ADS server's host:port; required.
	ControlPlane string
	// Delta selects incremental xDS (DELTA_GRPC) instead of state of the world.
	Delta bool
	// AdminAddress is Envoy's admin listener; "" means 127.0.0.1:15000.
	AdminAddress string
	// ReadyAddress, when set (ip:port, usually 0.0.0.0:15021; [::]:15021
	// takes both families), adds a static
	// listener that answers GET /ready from the admin listener and nothing
	// else, so the kubelet's probes can reach Envoy's readiness without the
	// admin interface being exposed beyond loopback.
	ReadyAddress string
	// Config is the workload's redirect config: its proxy ports and uid go into
	// the node metadata, so the proxy, its listeners and the installer agree.
	Config redirect.Config
	// Labels go into the node metadata.
	Labels map[string]string
	// CACert, when set, connects to the control plane over TLS verifying it
	// with this CA bundle (a path as Envoy sees it); ServerName is the name
	// checked against the control plane's certificate (default: the
	// ControlPlane host), and the SNI unless it is an IP address.
	CACert, ServerName string
	// ClientCert and ClientKey add a client certificate for mTLS; its SAN must
	// be NodeID.
	ClientCert, ClientKey string
}

// Node metadata keys the bootstrap sets.
const (
	MetadataInboundPort  = "detour.io/inbound-port"
	MetadataOutboundPort = "detour.io/outbound-port"
	MetadataProxyUID     = "detour.io/proxy-uid"
	MetadataMode         = "detour.io/mode"
	MetadataLabels       = "detour.io/labels"
)

const xdsClusterName = "detour-xds"

// Bootstrap returns the Envoy bootstrap for o: the node, an admin listener on
// loopback, ADS over gRPC (HTTP/2) to the control plane for listeners and
// clusters. It is validated like the served resources. Errors about o match
// redirect.ErrInvalid and name the option.
func Bootstrap(o BootstrapOptions) (*bootstrapv3.Bootstrap, error) {
	if o.NodeID == "" {
		return nil, &redirect.FieldError{Field: "node-id", Value: "", Reason: "is required"}
	}
	host, portStr, err := net.SplitHostPort(o.ControlPlane)
	if err != nil || host == "" {
		return nil, &redirect.FieldError{Field: "control-plane", Value: o.ControlPlane, Reason: "is not host:port"}
	}
	port, err := redirect.ParsePort(portStr)
	if err != nil {
		return nil, &redirect.FieldError{Field: "control-plane", Value: o.ControlPlane, Reason: "has no valid port"}
	}
	// A name may be absolute (a trailing dot: resolved without the search
	// domains, as Kubernetes users write cluster names); it is sent and
	// checked in TLS without the dot (RFC 6066).
	if _, err := netip.ParseAddr(host); err != nil && checkDNSName(strings.TrimSuffix(host, ".")) != nil {
		// Envoy would accept it and fail every DNS lookup of it, quietly.
		return nil, &redirect.FieldError{Field: "control-plane", Value: o.ControlPlane, Reason: "has a host that is neither an IP address nor a DNS name"}
	}
	admin := o.AdminAddress
	if admin == "" {
		admin = "127.0.0.1:15000"
	}
	adminAP, err := netip.ParseAddrPort(admin)
	if err != nil {
		return nil, &redirect.FieldError{Field: "admin-address", Value: admin, Reason: "is not ip:port"}
	}
	// A TCP listener of Envoy's own on the outbound or inbound port: one of
	// the two binds fails, and the proxy never becomes ready.
	proxyPort := func(field, value string, p uint16) error {
		switch p {
		case o.Config.Proxy.OutboundPort:
			return &redirect.FieldError{Field: field, Value: value, Reason: "is the proxy's outbound port (proxy.outboundPort)"}
		case o.Config.Proxy.InboundPort:
			return &redirect.FieldError{Field: field, Value: value, Reason: "is the proxy's inbound port (proxy.inboundPort)"}
		}
		return nil
	}
	if err := proxyPort("admin-address", admin, adminAP.Port()); err != nil {
		return nil, err
	}
	var readyAP netip.AddrPort
	if o.ReadyAddress != "" {
		readyAP, err = netip.ParseAddrPort(o.ReadyAddress)
		if err != nil {
			return nil, &redirect.FieldError{Field: "ready-address", Value: o.ReadyAddress, Reason: "is not ip:port"}
		}
		if readyAP.Port() == adminAP.Port() {
			return nil, &redirect.FieldError{Field: "ready-address", Value: o.ReadyAddress, Reason: "has the admin listener's port"}
		}
		if err := proxyPort("ready-address", o.ReadyAddress, readyAP.Port()); err != nil {
			return nil, err
		}
	}
	if err := pairedFiles("tls-cert", o.ClientCert, "tls-key", o.ClientKey); err != nil {
		return nil, err
	}
	if o.ClientCert != "" && o.CACert == "" {
		return nil, &redirect.FieldError{Field: "ca", Value: "", Reason: "is required with a client certificate (mTLS runs over TLS)"}
	}
	cluster := o.Cluster
	if cluster == "" {
		cluster = "detour"
	}
	if strings.TrimSpace(cluster) != cluster || strings.ContainsFunc(cluster, unicode.IsControl) {
		// A quoting slip (--cluster " x") would name a cluster no one else
		// spells that way, in every stat and log line of the proxy.
		return nil, &redirect.FieldError{Field: "cluster", Value: o.Cluster, Reason: "is not a cluster name (no surrounding spaces, no control characters)"}
	}
	if o.ServerName != "" {
		if _, err := netip.ParseAddr(o.ServerName); err != nil && checkDNSName(strings.TrimSuffix(o.ServerName, ".")) != nil {
			// No certificate could match it: every connection would fail
			// the identity check, quietly, in the proxy's log.
			return nil, &redirect.FieldError{Field: "server-name", Value: o.ServerName, Reason: "is neither an IP address nor a DNS name"}
		}
	}

	meta := map[string]any{
		MetadataInboundPort:  strconv.Itoa(int(o.Config.Proxy.InboundPort)),
		MetadataOutboundPort: strconv.Itoa(int(o.Config.Proxy.OutboundPort)),
		MetadataProxyUID:     strconv.FormatUint(uint64(o.Config.Proxy.UID), 10),
		MetadataMode:         string(o.Config.Mode),
	}
	if len(o.Labels) > 0 {
		labels := make(map[string]any, len(o.Labels))
		for _, k := range slices.Sorted(maps.Keys(o.Labels)) {
			labels[k] = o.Labels[k]
		}
		meta[MetadataLabels] = labels
	}
	md, err := structpb.NewStruct(meta)
	if err != nil {
		return nil, fmt.Errorf("build node metadata: %w", err)
	}

	apiType := corev3.ApiConfigSource_GRPC
	if o.Delta {
		apiType = corev3.ApiConfigSource_DELTA_GRPC
	}
	ads := func() *corev3.ConfigSource {
		return &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			ResourceApiVersion:    corev3.ApiVersion_V3,
		}
	}

	xds := &clusterv3.Cluster{
		Name:           xdsClusterName,
		ConnectTimeout: durationpb.New(connectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: xdsClusterName,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
					Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address:       host,
						PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
					}},
				}}},
			}}}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&httpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
				}},
			}),
		},
	}
	if _, err := netip.ParseAddr(host); err == nil {
		xds.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	} else {
		xds.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	}
	if o.CACert != "" {
		name := o.ServerName
		if name == "" {
			name = host
		}
		name = strings.TrimSuffix(name, ".")
		// Envoy checks only the chain unless told which name to expect: any
		// certificate of the CA would otherwise pass as the control plane.
		// An IP address is checked against the certificate's IP SANs (in
		// the form Envoy prints them) and never sent as SNI: RFC 6066
		// forbids IP literals in server_name, and servers may refuse them.
		san := &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS}
		sni := name
		if ip, err := netip.ParseAddr(name); err == nil {
			san.SanType, name, sni = tlsv3.SubjectAltNameMatcher_IP_ADDRESS, ip.WithZone("").Unmap().String(), ""
		}
		san.Matcher = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: name}}
		common := &tlsv3.CommonTlsContext{
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa:                 &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: o.CACert}},
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san},
			}},
		}
		if o.ClientCert != "" {
			common.TlsCertificates = []*tlsv3.TlsCertificate{{
				CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: o.ClientCert}},
				PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: o.ClientKey}},
			}}
		}
		xds.TransportSocket = &corev3.TransportSocket{
			Name:       "envoy.transport_sockets.tls",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{Sni: sni, CommonTlsContext: common})},
		}
	}

	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: o.NodeID, Cluster: cluster, Metadata: md},
		Admin: &bootstrapv3.Admin{
			Address: socketAddress(adminAP.Addr(), adminAP.Port()),
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:                   apiType,
				TransportApiVersion:       corev3.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: xdsClusterName},
				}}},
			},
			LdsConfig: ads(),
			CdsConfig: ads(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{xds}},
	}
	if o.ReadyAddress != "" {
		b.StaticResources.Clusters = append(b.StaticResources.Clusters, adminCluster(adminAP))
		b.StaticResources.Listeners = append(b.StaticResources.Listeners, readyListener(readyAP))
	}
	if err := ValidateResource(b); err != nil {
		return nil, fmt.Errorf("validate bootstrap: %w", err)
	}
	return b, nil
}

// BootstrapYAML renders a bootstrap as deterministic YAML (envoy -c accepts it).
func BootstrapYAML(b *bootstrapv3.Bootstrap) ([]byte, error) {
	js, err := protojson.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("render bootstrap: %w", err)
	}
	// JSONToYAML sorts keys and drops protojson's deliberately unstable spacing.
	return yaml.JSONToYAML(js)
}

// Names of the static resources of the ready endpoint.
const (
	adminClusterName  = "detour-admin"
	readyListenerName = "detour-ready"
)

// adminCluster reaches Envoy's own admin listener.
func adminCluster(admin netip.AddrPort) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 adminClusterName,
		ConnectTimeout:       durationpb.New(connectTimeout),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: adminClusterName,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress(admin.Addr(), admin.Port()),
				}},
			}}}},
		},
	}
}

// readyListener answers exactly GET /ready (Envoy's readiness: 200 once the
// first listeners and clusters arrived and the server is live) from the
// admin cluster; every other path is a 404 from the listener itself.
func readyListener(addr netip.AddrPort) *listenerv3.Listener {
	address := socketAddress(addr.Addr(), addr.Port())
	// "::" is every address: IPv4 ones too (Envoy sets IPV6_V6ONLY
	// otherwise), since the kubelet probes whichever family the pod's IP is.
	address.GetSocketAddress().Ipv4Compat = addr.Addr() == netip.IPv6Unspecified()
	return &listenerv3.Listener{
		Name:    readyListenerName,
		Address: address,
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: filterHCM,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&hcmv3.HttpConnectionManager{
				StatPrefix: readyListenerName,
				RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
					Name: readyListenerName,
					VirtualHosts: []*routev3.VirtualHost{{
						Name:    readyListenerName,
						Domains: []string{"*"},
						Routes: []*routev3.Route{{
							Match: &routev3.RouteMatch{
								PathSpecifier: &routev3.RouteMatch_Path{Path: "/ready"},
								Headers: []*routev3.HeaderMatcher{{
									Name: ":method",
									HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
										MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "GET"},
									}},
								}},
							},
							Action: &routev3.Route_Route{Route: &routev3.RouteAction{
								ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: adminClusterName},
							}},
						}},
					}},
				}},
				HttpFilters: []*hcmv3.HttpFilter{{
					Name:       filterRouter,
					ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
				}},
			})},
		}}}},
	}
}
