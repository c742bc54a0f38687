package controlplane

import (
	"strings"
	"testing"

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
	for _, cp := range []string{"127.0.0.1:18000", "[::1]:18000", "detour-control-plane.detour-system.svc:15010", "localhost:18000"} {
		if _, err := Bootstrap(BootstrapOptions{NodeID: "a", ControlPlane: cp, Config: redirect.Default()}); err != nil {
			t.Errorf("control plane %s: %v", cp, err)
		}
	}
}
