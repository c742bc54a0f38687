package deploy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/detour-mesh/detour/inject/webhook"
	"github.com/detour-mesh/detour/internal/meshconfig"
)

// baseImage is the image name deploy/kubernetes/kustomization.yaml's images
// entry rewrites (`kustomize edit set image detour-mesh/detour=REGISTRY/detour:TAG`).
const baseImage = "detour-mesh/detour"

// TestImageFollowsKustomizeSetImage: `kustomize edit set image
// detour-mesh/detour=REGISTRY/detour:TAG` (step 1 of docs/kubernetes.md) is
// the only image setting a user makes. kustomize's images transformer
// rewrites containers' image fields and nothing else, so no other place in
// the shipped manifests may name detour's image: the mesh config leaves
// injection.detourImage unset, and the injection webhook injects the image of
// its own pod, which the control-plane Deployment tells it (POD_NAME and
// POD_NAMESPACE from the downward API; webhook.OwnImage takes the container
// named control-plane).
func TestImageFollowsKustomizeSetImage(t *testing.T) {
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

	var containers int
	var cp *appsv1.Deployment
	for _, m := range readManifests(t, manifestDir) {
		if strings.HasPrefix(m.file, "examples/") {
			continue // applied on their own; their image is the user's to write
		}
		walkStrings(m.obj.Object, "", func(path, s string) {
			if !strings.Contains(s, baseImage) {
				return
			}
			if isContainerImage(path) {
				containers++
				return
			}
			for _, line := range strings.Split(s, "\n") {
				if strings.Contains(line, baseImage) {
					t.Errorf("%s %s names %s in %q, which kustomize edit set image does not rewrite: the user would have to set it by hand", m, path, baseImage, strings.TrimSpace(line))
				}
			}
		})
		switch {
		case m.obj.GetKind() == "ConfigMap" && m.obj.GetName() == meshconfig.ConfigMapName:
			data, _, _ := unstructured.NestedStringMap(m.obj.Object, "data")
			mesh, err := meshconfig.Parse([]byte(data[meshconfig.Key]))
			if err != nil {
				t.Fatalf("%s: %v", m, err)
			}
			if mesh.Injection.DetourImage != "" {
				t.Errorf("%s sets injection.detourImage %q; unset, the injected containers follow the control plane's image", m, mesh.Injection.DetourImage)
			}
		case m.obj.GetKind() == "Deployment" && m.obj.GetName() == "detour-control-plane":
			cp = &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m.obj.Object, cp); err != nil {
				t.Fatal(err)
			}
		}
	}
	if containers < 2 {
		t.Errorf("%d container images name %s; want the DaemonSet's and the control plane's", containers, baseImage)
	}
	if cp == nil {
		t.Fatal("no Deployment detour-control-plane")
	}
	var own *corev1.Container
	for i, c := range cp.Spec.Template.Spec.Containers {
		if c.Name == webhook.ControlPlaneContainer {
			own = &cp.Spec.Template.Spec.Containers[i]
		}
	}
	if own == nil {
		t.Fatalf("the control plane has no container named %s, the one whose image the webhook injects", webhook.ControlPlaneContainer)
	}
	if !strings.HasPrefix(own.Image, baseImage+":") {
		t.Errorf("control plane image %q is not %s:TAG, which kustomize rewrites", own.Image, baseImage)
	}
	env := map[string]string{}
	for _, e := range own.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("control plane env from the downward API %v; want POD_NAME=metadata.name and POD_NAMESPACE=metadata.namespace (the webhook reads its own pod's image)", env)
	}
}

// TestKustomizeSetImage builds deploy/kubernetes with kubectl kustomize after
// the images entry is rewritten as `kustomize edit set image
// detour-mesh/detour=registry.example/detour:v9` rewrites it: every
// container runs the new image and no document names the old one. It needs
// kubectl on PATH (the project's deps do not install it).
func TestKustomizeSetImage(t *testing.T) {
	t.Parallel()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not on PATH")
	}
	dir := t.TempDir()
	src := filepath.Join(repoRoot, "deploy/kubernetes")
	files, err := filepath.Glob(filepath.Join(src, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "kustomization.yaml" {
			old := "  - name: " + baseImage + "\n    newTag: dev\n"
			if !bytes.Contains(b, []byte(old)) {
				t.Fatalf("kustomization.yaml has no images entry %q", old)
			}
			b = bytes.Replace(b, []byte(old), []byte("  - name: "+baseImage+"\n    newName: registry.example/detour\n    newTag: v9\n"), 1)
		}
		writeFile(t, filepath.Join(dir, filepath.Base(f)), string(b))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, kubectl, "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, baseImage+":") {
			t.Errorf("after set image, the build still names %s: %q", baseImage, strings.TrimSpace(line))
		}
	}
	var images []string
	for _, m := range decodeManifests(t, "kustomize", out) {
		walkStrings(m.obj.Object, "", func(path, s string) {
			if isContainerImage(path) {
				images = append(images, m.String()+" "+path+"="+s)
				if s != "registry.example/detour:v9" {
					t.Errorf("%s %s is %q, want registry.example/detour:v9", m, path, s)
				}
			}
		})
	}
	if len(images) < 2 {
		t.Errorf("container images %q; want the DaemonSet's and the control plane's", images)
	}
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
