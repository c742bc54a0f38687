package controlplane

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/controlplane/xds"
	"github.com/detour-mesh/detour/redirect"
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

// A build from the previous build's memo serves exactly what a build from
// scratch serves, through changes of everything a workload's own listeners
// and clusters are made of, and reuses what did not change. A rejected mesh
// leaves the memo of the last build served (Server.Update keeps it), and the
// next valid build starts from that one; a Server given the same meshes
// serves the same versions.
func TestBuildFromMemoMatchesFreshBuild(t *testing.T) {
	t.Parallel()
	workload := func(m *Mesh, id string) *Workload {
		for i := range m.Workloads {
			if m.Workloads[i].NodeID == id {
				return &m.Workloads[i]
			}
		}
		t.Fatalf("no workload %s", id)
		return nil
	}
	steps := []struct {
		name   string
		change func(*Mesh)
	}{
		{"unchanged", func(*Mesh) {}},
		{"inbound protocol", func(m *Mesh) { workload(m, "redirect-ipv4").Inbound[0].Protocol = ProtocolTCP }},
		{"app port", func(m *Mesh) { workload(m, "redirect-ipv4").Inbound[1].AppPort = 19091 }},
		{"inbound port added", func(m *Mesh) {
			w := workload(m, "redirect-ipv6")
			w.Inbound = append(w.Inbound, InboundPort{Port: 7070, AppPort: 7070, Protocol: ProtocolHTTP})
		}},
		{"mode", func(m *Mesh) { workload(m, "tproxy-ipv4").TransparentProxy.Mode = redirect.ModeRedirect }},
		{"passthrough source", func(m *Mesh) {
			workload(m, "redirect-dual").TransparentProxy.Proxy.InboundPassthroughSource.IPv4 = netip.MustParseAddr("127.0.0.7")
		}},
		{"proxy ports", func(m *Mesh) {
			p := &workload(m, "tproxy-dual").TransparentProxy.Proxy
			p.InboundPort, p.OutboundPort = 15016, 15011
		}},
		{"excluded ports", func(m *Mesh) {
			workload(m, "excluded-ports").TransparentProxy.Inbound.ExcludePorts = []redirect.PortRange{{First: 22, Last: 22}}
		}},
		{"outbound policy", func(m *Mesh) { m.OutboundPolicy = RegistryOnly }},
		// Rejected: the next build starts from the memo of the last one
		// served, as Server.Update keeps it.
		{"rejected: inbound port listed twice", func(m *Mesh) {
			w := workload(m, "redirect-ipv6")
			w.Inbound = append(w.Inbound, w.Inbound[0])
		}},
		{"valid again, and an app port", func(m *Mesh) {
			w := workload(m, "redirect-ipv6")
			w.Inbound = w.Inbound[:len(w.Inbound)-1]
			w.Inbound[0].AppPort = 18080
		}},
		{"endpoint", func(m *Mesh) {
			m.Services[0].Endpoints = append(m.Services[0].Endpoints, Endpoint{Address: netip.MustParseAddr("203.0.113.23")})
		}},
		{"back to the start", nil},
	}
	m := loadMesh(t, "testdata/matrix.yaml")
	prev, err := buildSnapshots(m)
	if err != nil {
		t.Fatal(err)
	}
	// A Server given the same meshes builds each from the memo it kept.
	srv := NewServer(xds.Options{})
	ctx := context.Background()
	if _, err := srv.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	for i, step := range steps {
		if step.change == nil {
			m = loadMesh(t, "testdata/matrix.yaml")
		} else {
			step.change(m)
		}
		if strings.HasPrefix(step.name, "rejected") {
			if _, err := buildFrom(m, prev.memo); err == nil {
				t.Fatalf("%s: the build from the memo was not rejected", step.name)
			}
			kept := srv.memo
			if _, err := srv.Update(ctx, m); err == nil || !strings.Contains(err.Error(), "is listed twice") {
				t.Fatalf("%s: Update = %v, want the mesh rejected", step.name, err)
			}
			if srv.memo != kept {
				t.Fatalf("%s: the Server did not keep the memo of the last build it served", step.name)
			}
			continue // prev stays: the next build starts from it
		}
		memo, err := buildFrom(m, prev.memo)
		if err != nil {
			t.Fatalf("%s: build from the memo: %v", step.name, err)
		}
		if _, err := srv.Update(ctx, m); err != nil {
			t.Fatalf("%s: Update: %v", step.name, err)
		}
		fresh, err := buildSnapshots(m)
		if err != nil {
			t.Fatalf("%s: build: %v", step.name, err)
		}
		if len(memo.nodes) != len(fresh.nodes) {
			t.Fatalf("%s: %d nodes from the memo, %d from scratch", step.name, len(memo.nodes), len(fresh.nodes))
		}
		changed := 0
		for id, ns := range fresh.nodes {
			if got := memo.nodes[id]; got == nil || got.Versions() != ns.Versions() {
				t.Errorf("%s: node %s from the memo has versions %v, from scratch %v", step.name, id, got.Versions(), ns.Versions())
			}
			if got, ok := srv.Versions(id); !ok || got != ns.Versions() {
				t.Errorf("%s: the Server serves node %s versions %v, a build from scratch %v", step.name, id, got, ns.Versions())
			}
			if prev.nodes[id].Versions() != ns.Versions() {
				changed++
			}
		}
		if (i == 0) != (changed == 0) {
			t.Errorf("%s: %d nodes changed", step.name, changed)
		}
		if i == 0 {
			// Nothing changed: every resource the memo kept is served again
			// as it was, not made nor encoded again.
			for _, kind := range []struct {
				name      string
				now, then map[string]*memoEntry
			}{{"listener", memo.memo.listeners, prev.memo.listeners}, {"cluster", memo.memo.clusters, prev.memo.clusters}} {
				for k, e := range kind.now {
					if kind.then[k] != e {
						t.Errorf("unchanged: %s %s made again", kind.name, e.name)
					}
				}
				if len(kind.now) == 0 || len(kind.now) != len(kind.then) {
					t.Errorf("unchanged: the memo kept %d %ss, the build before it %d", len(kind.now), kind.name, len(kind.then))
				}
			}
		}
		prev = memo
	}
}

// A build makes each outbound part (the listeners and clusters of a
// workload's outbound side) once and serves it to every workload of the
// same redirect config, IP families and reach set: each of them must still
// be served exactly its own resources — what a generator of its own makes
// for it — and a workload that differs in any of the three must not be
// served another's part. The matrix's workloads each get a twin (other
// inbound ports: the same part) and variants of their reach set, families
// and outbound port (another part each).
func TestNodesSharingAnOutboundPartGetTheirOwn(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, "testdata/matrix.yaml")
	twins := map[string]string{} // twin → original
	for _, w := range slices.Clone(m.Workloads) {
		twin := w
		twin.NodeID = w.NodeID + "-twin"
		twin.Labels = nil // not a web endpoint
		twin.Inbound = nil
		for _, p := range w.Inbound {
			p.Port, p.AppPort = p.Port+1, p.AppPort+1
			twin.Inbound = append(twin.Inbound, p)
		}
		twins[twin.NodeID] = w.NodeID

		reach := twin
		reach.NodeID, reach.Reach = w.NodeID+"-reach-db", []string{"db"}
		v4 := twin
		v4.NodeID = w.NodeID + "-addr-ipv4"
		v4.Addresses = slices.DeleteFunc(slices.Clone(w.Addresses), netip.Addr.Is6)
		if len(v4.Addresses) == 0 {
			v4.Addresses = []netip.Addr{netip.MustParseAddr("192.0.2.99")}
		}
		port := twin
		port.NodeID = w.NodeID + "-outbound-port"
		port.TransparentProxy.Proxy.OutboundPort++
		m.Workloads = append(m.Workloads, twin, reach, port)
		if f := w.TransparentProxy.IPFamilies; f == "" || f == redirect.IPFamiliesAuto {
			m.Workloads = append(m.Workloads, v4)
		}
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}

	// The twins are served their original's part, and the build has fewer
	// parts than workloads.
	g := newGenerator(m)
	parts := map[string]*outboundPart{}
	for i := range m.Workloads {
		w := &m.Workloads[i]
		cfg, id := g.config(&w.TransparentProxy)
		key, part := shapeKey(w, id, nil)
		parts[w.NodeID], _ = g.workload(w, cfg, key[:part], ownResources{})
	}
	for twin, orig := range twins {
		if parts[twin] != parts[orig] {
			t.Errorf("%s and %s have the same outbound side but were given two parts", twin, orig)
		}
	}
	if n := len(g.parts); n >= len(m.Workloads) {
		t.Fatalf("%d parts for %d workloads: nothing is shared", n, len(m.Workloads))
	}

	b, err := buildSnapshots(m)
	if err != nil {
		t.Fatal(err)
	}
	again, err := buildFrom(m, b.memo)
	if err != nil {
		t.Fatal(err)
	}
	checkBuildsAsAlone(t, m, map[string]*build{"the build": b, "a build from the memo": again})
}
