package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// TestOverlaysMoveDirsTogether applies each deploy/overlays/*/patch.yaml to the
// base DaemonSet (as kustomize does) and checks that the installer's
// --bin-dir/--conf-dir, the readiness probe's and the hostPath mounts all name
// the layout's directories — a mismatch would write node paths the container
// does not see, or probe directories the installer does not write.
func TestOverlaysMoveDirsTogether(t *testing.T) {
	t.Parallel()
	want := map[string][2]string{
		"gke":       {"/home/kubernetes/bin", "/etc/cni/net.d"},
		"k3s":       {"/var/lib/rancher/k3s/data/cni", "/var/lib/rancher/k3s/agent/etc/cni/net.d"},
		"openshift": {"/var/lib/cni/bin", "/etc/kubernetes/cni/net.d"},
	}
	var base []byte
	for _, m := range readManifests(t, manifestDir) {
		if m.obj.GetKind() == "DaemonSet" && m.obj.GetName() == "detour-cni-node" {
			b, err := json.Marshal(m.obj.Object)
			if err != nil {
				t.Fatal(err)
			}
			base = b
		}
	}
	if base == nil {
		t.Fatal("no DaemonSet detour-cni-node in deploy/kubernetes")
	}
	dirs, err := filepath.Glob(filepath.Join(repoRoot, "deploy/overlays/*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != len(want) {
		t.Errorf("overlays %v, want %d (one per layout)", dirs, len(want))
	}
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dirsWant, ok := want[name]
			if !ok {
				t.Fatalf("overlay %s: no expected layout in this test", name)
			}
			kust, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(kust), "../../kubernetes") || !strings.Contains(string(kust), "path: patch.yaml") {
				t.Errorf("kustomization.yaml does not patch the base with patch.yaml:\n%s", kust)
			}
			y, err := os.ReadFile(filepath.Join(dir, "patch.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			js, err := yaml.YAMLToJSON(y)
			if err != nil {
				t.Fatal(err)
			}
			patch, err := jsonpatch.DecodePatch(js)
			if err != nil {
				t.Fatalf("patch.yaml: %v", err)
			}
			out, err := patch.Apply(base)
			if err != nil {
				t.Fatalf("patch.yaml does not apply to the base (its test ops guard the base's values): %v", err)
			}
			var ds appsv1.DaemonSet
			if err := json.Unmarshal(out, &ds); err != nil {
				t.Fatal(err)
			}
			spec := ds.Spec.Template.Spec
			ctr := spec.Containers[0]
			bin, conf := dirsWant[0], dirsWant[1]
			args := strings.Join(ctr.Args, " ")
			probe := strings.Join(ctr.ReadinessProbe.Exec.Command, " ")
			for _, s := range []string{args, probe} {
				if !strings.Contains(s, "--bin-dir="+bin+" ") || !strings.Contains(s, "--conf-dir="+conf) || strings.Contains(s, "/opt/cni/bin") {
					t.Errorf("%q: want --bin-dir=%s and --conf-dir=%s", s, bin, conf)
				}
			}
			mounts := map[string]string{}
			for _, vm := range ctr.VolumeMounts {
				mounts[vm.Name] = vm.MountPath
			}
			got := map[string]bool{}
			for _, v := range spec.Volumes {
				if v.ConfigMap != nil {
					continue // the mesh config, the same on every cluster
				}
				if v.HostPath == nil || mounts[v.Name] != v.HostPath.Path {
					t.Errorf("volume %s: hostPath %v mounted at %q; they must match", v.Name, v.HostPath, mounts[v.Name])
					continue
				}
				got[v.HostPath.Path] = true
			}
			if !got[bin] || !got[conf] {
				t.Errorf("hostPaths %v, want %s and %s", got, bin, conf)
			}
		})
	}
}
