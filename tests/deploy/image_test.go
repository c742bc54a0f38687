package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// baseImage is the image name deploy/kubernetes/kustomization.yaml's images
// entry rewrites (`kustomize edit set image detour-mesh/detour=REGISTRY/detour:TAG`).
const baseImage = "detour-mesh/detour"

// TestImageSettingsOutsideContainersAreDocumented finds every place in the
// shipped manifests that names detour's image other than a container's image
// field. kustomize's images transformer rewrites only those fields: the image
// a ConfigMap names (the injector's injection.detourImage, which the injected
// detour-init and detour-validate containers run) keeps detour-mesh/detour:dev,
// an image nobody publishes, after `kustomize edit set image`. Each such
// setting must be named in docs/kubernetes.md's step 1, next to that command,
// so a user sets it too.
func TestImageSettingsOutsideContainersAreDocumented(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs/kubernetes.md"))
	if err != nil {
		t.Fatal(err)
	}
	step := string(doc)
	start := strings.Index(step, "## 1. Build and push the image")
	if start < 0 {
		t.Fatal("docs/kubernetes.md has no section \"## 1. Build and push the image\"")
	}
	step = step[start:]
	if end := strings.Index(step[3:], "\n## "); end >= 0 {
		step = step[:end+3]
	}
	if !strings.Contains(step, "kustomize edit set image "+baseImage+"=") {
		t.Errorf("step 1 of docs/kubernetes.md no longer sets the image with kustomize edit set image %s=…", baseImage)
	}

	var outside []string
	for _, m := range readManifests(t, manifestDir) {
		if strings.HasPrefix(m.file, "examples/") {
			continue // applied on their own; their image is the user's to write
		}
		walkStrings(m.obj.Object, "", func(path, s string) {
			if !strings.Contains(s, baseImage) || isContainerImage(path) {
				return
			}
			// A setting inside an embedded document (a ConfigMap's
			// config.yaml): the key on the line that names the image.
			for _, line := range strings.Split(s, "\n") {
				if !strings.Contains(line, baseImage) {
					continue
				}
				key, _, ok := strings.Cut(strings.TrimSpace(line), ":")
				if !ok || strings.HasPrefix(key, "#") {
					key = path
				}
				outside = append(outside, m.String()+" "+path+": "+key)
				if !strings.Contains(step, key) {
					t.Errorf("%s %s names %s in %q, which kustomize edit set image does not rewrite; docs/kubernetes.md step 1 does not tell the user to set %s", m, path, baseImage, strings.TrimSpace(line), key)
				}
			}
		})
	}
	// The check above is only worth something while such a setting exists.
	if len(outside) == 0 {
		t.Errorf("no setting outside a container names %s; the mesh config's injection.detourImage is expected to", baseImage)
	}
	t.Logf("image settings outside containers: %q", outside)
}

// isContainerImage reports whether path is the image field of a container or
// init container, which kustomize's images transformer rewrites.
func isContainerImage(path string) bool {
	return strings.HasSuffix(path, ".image") &&
		(strings.Contains(path, ".containers[") || strings.Contains(path, ".initContainers["))
}

// walkStrings calls f with the path and value of every string in v.
func walkStrings(v any, path string, f func(path, s string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			walkStrings(x, path+"."+k, f)
		}
	case []any:
		for i, x := range v {
			walkStrings(x, fmt.Sprintf("%s[%d]", path, i), f)
		}
	case string:
		f(path, v)
	}
}
