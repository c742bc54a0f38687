package controlplane

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/detour-mesh/detour/redirect"
)

// TestBootstrapReadyListener: ReadyAddress adds a listener that routes only
// GET /ready to the admin listener (nothing else of the admin interface is
// reachable through it); bad values are refused naming the option.
func TestBootstrapReadyListener(t *testing.T) {
	t.Parallel()
	o := BootstrapOptions{NodeID: "web-1.shop", ControlPlane: "cp.example:15010", ReadyAddress: "0.0.0.0:15021", Config: redirect.Default()}
	b, err := Bootstrap(o)
	if err != nil {
		t.Fatal(err)
	}
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 || ls[0].GetAddress().GetSocketAddress().GetPortValue() != 15021 {
		t.Fatalf("listeners %v: want one on :15021", ls)
	}
	y, err := BootstrapYAML(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"path: /ready", "exact: GET", "cluster: detour-admin", "portValue: 15000"} {
		if !strings.Contains(string(y), want) {
			t.Errorf("bootstrap lacks %q:\n%s", want, y)
		}
	}
	if strings.Contains(string(y), "prefix: /") {
		t.Errorf("the ready listener routes a prefix, exposing the admin interface:\n%s", y)
	}

	without, err := Bootstrap(BootstrapOptions{NodeID: "a", ControlPlane: "cp.example:15010", Config: redirect.Default()})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(without.GetStaticResources().GetListeners()); n != 0 {
		t.Errorf("%d static listeners without ReadyAddress", n)
	}

	for _, bad := range []string{"15021", "0.0.0.0:15000"} {
		o.ReadyAddress = bad
		if _, err := Bootstrap(o); err == nil || !strings.Contains(err.Error(), "ready-address") {
			t.Errorf("ReadyAddress %q: %v, want an error naming ready-address", bad, err)
		}
	}
}

// TestBootstrapRefusesWhatEnvoyCannotRun: an admin or ready port that is one
// of the proxy's listener ports (Envoy fails to bind one of the two) and a
// control plane host that is neither an IP address nor a DNS name are refused
// naming the option.
func TestBootstrapRefusesWhatEnvoyCannotRun(t *testing.T) {
	t.Parallel()
	istio, err := redirect.Preset("istio")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		o    BootstrapOptions
		want string
	}{
		{"admin on the outbound port", BootstrapOptions{AdminAddress: "127.0.0.1:15001", Config: redirect.Default()}, `admin-address: "127.0.0.1:15001" is the proxy's outbound port (proxy.outboundPort)`},
		{"admin on the inbound port", BootstrapOptions{AdminAddress: "127.0.0.1:15006", Config: istio}, `admin-address: "127.0.0.1:15006" is the proxy's inbound port (proxy.inboundPort)`},
		{"ready on the inbound port", BootstrapOptions{ReadyAddress: "0.0.0.0:15006", Config: redirect.Default()}, `ready-address: "0.0.0.0:15006" is the proxy's inbound port`},
		{"control plane host", BootstrapOptions{ControlPlane: "bad_host!:18000", Config: redirect.Default()}, `control-plane: "bad_host!:18000" has a host that is neither an IP address nor a DNS name`},
	} {
		o := tc.o
		o.NodeID = "a"
		if o.ControlPlane == "" {
			o.ControlPlane = "cp.example:15010"
		}
		_, err := Bootstrap(o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Bootstrap = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	for _, cp := range []string{"127.0.0.1:18000", "[::1]:18000", "detour-control-plane.detour-system.svc:15010", "localhost:18000",
		"detour-control-plane.detour-system.svc.cluster.local.:15010"} {
		b, err := Bootstrap(BootstrapOptions{NodeID: "a", ControlPlane: cp, Config: redirect.Default()})
		if err != nil {
			t.Errorf("control plane %s: %v", cp, err)
			continue
		}
		// The name is resolved as written: an absolute one keeps its dot.
		host, _, _ := net.SplitHostPort(cp)
		sa := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if sa.GetAddress() != host {
			t.Errorf("control plane %s: the xds cluster dials %q, want %q", cp, sa.GetAddress(), host)
		}
	}
}

// TestBootstrapTLSServerIdentity: the control plane's identity is checked
// against its certificate's IP SANs when it is named by an IP address, and
// that address is never sent as SNI (RFC 6066 allows host names only); a DNS
// name is both. The handshake half plays Envoy with the bootstrap's
// UpstreamTlsContext against the control plane's own TLS server: the server
// sees the SNI the bootstrap sets, and a certificate without the expected SAN
// is refused.
func TestBootstrapTLSServerIdentity(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t) // the server certificate: DNS detour-control-plane, IP 127.0.0.1
	for _, tc := range []struct {
		name, controlPlane, serverName string
		wantSNI                        string
		wantSAN                        tlsv3.SubjectAltNameMatcher_SanType
		wantName                       string
		handshake                      bool // the server certificate must pass
	}{
		{"ipv4 control plane", "127.0.0.1:18000", "", "", tlsv3.SubjectAltNameMatcher_IP_ADDRESS, "127.0.0.1", true},
		{"ipv6 control plane", "[::1]:18000", "", "", tlsv3.SubjectAltNameMatcher_IP_ADDRESS, "::1", false},
		{"ipv6 written long", "[0:0::0:1]:18000", "", "", tlsv3.SubjectAltNameMatcher_IP_ADDRESS, "::1", false},
		{"ip control plane, server name", "127.0.0.1:18000", "detour-control-plane", "detour-control-plane", tlsv3.SubjectAltNameMatcher_DNS, "detour-control-plane", true},
		{"dns control plane", "cp.example:15010", "", "cp.example", tlsv3.SubjectAltNameMatcher_DNS, "cp.example", false},
		// An absolute name is resolved as written; TLS names carry no dot.
		{"absolute dns control plane", "detour-control-plane.:15010", "", "detour-control-plane", tlsv3.SubjectAltNameMatcher_DNS, "detour-control-plane", true},
		{"absolute server name", "127.0.0.1:18000", "detour-control-plane.", "detour-control-plane", tlsv3.SubjectAltNameMatcher_DNS, "detour-control-plane", true},
		{"ip server name", "cp.example:15010", "127.0.0.1", "", tlsv3.SubjectAltNameMatcher_IP_ADDRESS, "127.0.0.1", true},
		{"another ip", "192.0.2.1:18000", "", "", tlsv3.SubjectAltNameMatcher_IP_ADDRESS, "192.0.2.1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, err := Bootstrap(BootstrapOptions{NodeID: "a", ControlPlane: tc.controlPlane, ServerName: tc.serverName, CACert: p.caFile, Config: redirect.Default()})
			if err != nil {
				t.Fatal(err)
			}
			var utc tlsv3.UpstreamTlsContext
			if err := b.GetStaticResources().GetClusters()[0].GetTransportSocket().GetTypedConfig().UnmarshalTo(&utc); err != nil {
				t.Fatal(err)
			}
			if utc.GetSni() != tc.wantSNI {
				t.Errorf("sni %q, want %q", utc.GetSni(), tc.wantSNI)
			}
			sans := utc.GetCommonTlsContext().GetValidationContext().GetMatchTypedSubjectAltNames()
			if len(sans) != 1 || sans[0].GetSanType() != tc.wantSAN || sans[0].GetMatcher().GetExact() != tc.wantName {
				t.Fatalf("SAN matchers %v, want exactly %v %q", sans, tc.wantSAN, tc.wantName)
			}
			sawSNI, err := envoyHandshake(t, p, &utc)
			if err == nil && sawSNI != tc.wantSNI {
				t.Errorf("the server saw SNI %q, want %q", sawSNI, tc.wantSNI)
			}
			if tc.handshake && err != nil {
				t.Errorf("handshake: %v, want the control plane's certificate accepted", err)
			}
			if !tc.handshake && err == nil {
				t.Errorf("handshake succeeded; the certificate has no SAN %q and must be refused", tc.wantName)
			}
		})
	}
}

// envoyHandshake connects to a control plane TLS server the way Envoy does
// with utc: SNI as utc says, the chain verified against the CA and the
// certificate's SANs matched exactly. It returns the SNI the server saw.
func envoyHandshake(t *testing.T, p *testPKI, utc *tlsv3.UpstreamTlsContext) (string, error) {
	t.Helper()
	srv, err := TLSConfig(p.serverCert, p.serverKey, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	sni := make(chan string, 1)
	forClient := srv.GetConfigForClient
	srv.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		sni <- h.ServerName
		return forClient(h)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.(*tls.Conn).Handshake()
	}()
	san := utc.GetCommonTlsContext().GetValidationContext().GetMatchTypedSubjectAltNames()[0]
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		ServerName:         utc.GetSni(), // "": no server_name extension
		InsecureSkipVerify: true,         // verified below, as Envoy's validation context does
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: p.pool}); err != nil {
				return err
			}
			var names []string
			switch san.GetSanType() {
			case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
				for _, ip := range leaf.IPAddresses {
					names = append(names, ip.String())
				}
			case tlsv3.SubjectAltNameMatcher_DNS:
				names = leaf.DNSNames
			}
			if !slices.Contains(names, san.GetMatcher().GetExact()) {
				return fmt.Errorf("no %v SAN %q in %v", san.GetSanType(), san.GetMatcher().GetExact(), names)
			}
			return nil
		},
	})
	if err != nil {
		return "", err
	}
	conn.Close()
	return <-sni, nil
}
