package webhook_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/detour-mesh/detour/inject"
	"github.com/detour-mesh/detour/inject/webhook"
	"github.com/detour-mesh/detour/internal/meshconfig"
	"github.com/detour-mesh/detour/redirect"
)

// TestDetourImageFollowsTheControlPlane: with injection.detourImage unset,
// the injected detour-init and detour-validate containers run the image of
// the control plane's own pod (what `kustomize edit set image` or `kubectl
// set image` made it); an explicit injection.detourImage wins; without
// either, the webhook does not start, and its error names the setting.
func TestDetourImageFollowsTheControlPlane(t *testing.T) {
	t.Parallel()
	const own = "registry.example/detour:v2"
	cpPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "detour-control-plane-7d9f-x2k", Namespace: "detour-system"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "other-mesh-proxy", Image: "example/proxy:1"},
			{Name: webhook.ControlPlaneContainer, Image: own},
		}},
	}
	soloPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "solo", Namespace: "detour-system"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "cp", Image: "registry.example/detour:solo"}}},
	}
	oddPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "odd", Namespace: "detour-system"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "a", Image: "example/a:1"}, {Name: "b", Image: "example/b:1"},
		}},
	}
	for _, c := range []struct {
		name, mesh, podName string
		container           string   // the injected container that runs the detour image; "" = none
		want                string   // its image
		wantErr             []string // in New's error instead
	}{
		{name: "init-container mode, unset", mesh: "injection: {redirect: init-container}", podName: cpPod.Name,
			container: inject.InitName, want: own},
		{name: "validate, unset", mesh: "injection: {validate: true}", podName: cpPod.Name,
			container: inject.ValidateName, want: own},
		{name: "one container", mesh: "injection: {redirect: init-container}", podName: soloPod.Name,
			container: inject.InitName, want: "registry.example/detour:solo"},
		// Set: the pod is not read (it does not exist).
		{name: "set wins", mesh: "injection: {redirect: init-container, detourImage: 'mirror.example/detour:pinned'}", podName: "gone",
			container: inject.InitName, want: "mirror.example/detour:pinned"},
		// cni mode without validate injects no detour container: nothing to resolve.
		{name: "cni mode needs none", mesh: "injection: {redirect: cni}", podName: ""},
		{name: "own pod unknown", mesh: "injection: {redirect: init-container}", podName: "",
			wantErr: []string{"injection.detourImage", "is unset", inject.InitName, "POD_NAME"}},
		{name: "own pod missing", mesh: "injection: {validate: true}", podName: "gone",
			wantErr: []string{"detour-system/gone", "not found"}},
		{name: "no control-plane container", mesh: "injection: {validate: true}", podName: oddPod.Name,
			wantErr: []string{"detour-system/odd", webhook.ControlPlaneContainer, "a, b", "injection.detourImage"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			mesh, err := meshconfig.Parse([]byte(c.mesh + "\n"))
			if err != nil {
				t.Fatal(err)
			}
			mesh.Injection.Sidecar = meshconfig.SidecarNative // no /version to ask
			ns := ""
			if c.podName != "" {
				ns = "detour-system"
			}
			s, err := webhook.New(context.Background(), webhook.Options{
				Client:       fake.NewClientset(cpPod, soloPod, oddPod),
				Mesh:         mesh,
				Bootstrap:    webhook.Bootstrap,
				PodNamespace: ns,
				PodName:      c.podName,
			})
			if c.wantErr != nil {
				if err == nil {
					t.Fatalf("webhook started with mesh config %q and own pod %q", c.mesh, c.podName)
				}
				for _, w := range c.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not name %q", err, w)
					}
				}
				if c.podName == "" && !errors.Is(err, redirect.ErrInvalid) {
					t.Errorf("error %v does not match redirect.ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m, err := s.Injector().Plan(metav1.ObjectMeta{Name: "p", Namespace: "shop"},
				corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}}})
			if err != nil {
				t.Fatal(err)
			}
			images := map[string]string{}
			for _, ic := range m.InitContainers {
				images[ic.Name] = ic.Image
			}
			for _, name := range []string{inject.InitName, inject.ValidateName} {
				img, ok := images[name]
				switch {
				case name == c.container && img != c.want:
					t.Errorf("%s runs %q, want %q", name, img, c.want)
				case name != c.container && ok:
					t.Errorf("%s was injected (image %q); the mesh config %q asks for none", name, img, c.mesh)
				}
			}
		})
	}
}
