package controlplane

import (
	"net/netip"
	"slices"
	"testing"
)

func TestVersionsAreContentHashes(t *testing.T) {
	t.Parallel()
	a, err := buildSnapshots(loadMesh(t, "testdata/matrix.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := buildSnapshots(loadMesh(t, "testdata/matrix.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for id, ns := range a.nodes {
		if b.nodes[id].Versions() != ns.Versions() {
			t.Errorf("node %s: versions differ between two builds of the same mesh: %v, %v", id, ns.Versions(), b.nodes[id].Versions())
		}
		if ns.Versions().Listeners == "" || ns.Versions().Clusters == "" {
			t.Errorf("node %s: empty version %v", id, ns.Versions())
		}
		if got := ns.GetVersion("type.googleapis.com/envoy.config.listener.v3.Listener"); got != ns.Versions().Listeners {
			t.Errorf("node %s: snapshot listener version %q, want %q", id, got, ns.Versions().Listeners)
		}
	}

	// A new endpoint of "cache" changes the clusters of exactly the nodes that
	// reach cache over IPv6, and no listener.
	m := loadMesh(t, "testdata/matrix.yaml")
	for i := range m.Services {
		if m.Services[i].Name == "cache" {
			m.Services[i].Endpoints = append(m.Services[i].Endpoints, Endpoint{Address: netip.MustParseAddr("2001:db8:1::32")})
		}
	}
	c, err := buildSnapshots(m)
	if err != nil {
		t.Fatal(err)
	}
	var changed []string
	for id, ns := range a.nodes {
		if c.nodes[id].Versions().Listeners != ns.Versions().Listeners {
			t.Errorf("node %s: listener version changed for an endpoint change", id)
		}
		if c.nodes[id].Versions().Clusters != ns.Versions().Clusters {
			changed = append(changed, id)
		}
	}
	slices.Sort(changed)
	want := []string{"dns-dual", "redirect-dual", "redirect-ipv6", "tproxy-dual"} // excluded-ports excludes cache's VIP
	if !slices.Equal(changed, want) {
		t.Errorf("nodes whose clusters changed = %v, want %v", changed, want)
	}
}
