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
