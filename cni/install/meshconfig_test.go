package install

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/cni"
	"github.com/detour-mesh/detour/internal/meshconfig"
)

// TestEntryFromMeshConfig: with MeshConfigFile, the plugin's base config is
// the mesh config's — the one the control plane and the injector read — and
// an edit of the file reaches the entry on the next repair.
func TestEntryFromMeshConfig(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	primary := n.primary(t, "10-flannel.conflist")
	mesh := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, mesh, "preset: istio\nredirect: {outbound: {excludePorts: [5432]}}\ninjection: {validate: true}\n")
	o := n.options()
	o.MeshConfigFile = mesh
	if _, err := New(o).Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	base := func() *cni.Conf {
		t.Helper()
		conf, _, _ := entryAsThePluginReadsIt(t, primary)
		return conf
	}
	got, err := base().BaseConfig()
	if err != nil {
		t.Fatal(err)
	}
	mc, err := meshconfig.Load(mesh)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(mc.Base(), got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("the plugin's base config differs from the mesh config's (-mesh +plugin):\n%s", diff)
	}

	writeFile(t, mesh, "preset: kuma\n")
	if changes, err := New(o).Install(context.Background()); err != nil || len(changes) != 1 {
		t.Fatalf("Install after a mesh config change = %q, %v", changes, err)
	}
	if got, _ := base().BaseConfig(); got.Proxy.UID != 5678 || len(got.Outbound.ExcludePorts) != 0 {
		t.Errorf("entry not updated: uid %d, outbound excludes %v", got.Proxy.UID, got.Outbound.ExcludePorts)
	}

	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"with preset", func(o *Options) { o.Preset = "istio" }, "do not combine"},
		{"bad document", func(o *Options) { writeFile(t, mesh, "injection: {sidecar: always}\n") }, `injection.sidecar: "always"`},
	} {
		o := n.options()
		o.MeshConfigFile = mesh
		tc.edit(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "mesh-config") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want an error naming mesh-config and %q", tc.name, err, tc.want)
		}
	}
}
