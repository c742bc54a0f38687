package webhook_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/detour-mesh/detour/inject"
	"github.com/detour-mesh/detour/inject/webhook"
	"github.com/detour-mesh/detour/internal/meshconfig"
)

// TestInjectedManifestsAreStrictlyValid creates (server-side dry run, strict
// field validation) every object `detour inject` makes of the golden inputs,
// in each injection mode: the API server must accept them as they are, with
// no unknown or misplaced field.
func TestInjectedManifestsAreStrictlyValid(t *testing.T) {
	cfg := startAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	for _, ns := range []string{"shop", "monitoring"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	inputs, err := filepath.Glob("../testdata/input/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, mesh := range []string{
		"",
		"injection: {sidecar: classic, validate: true, detourImage: registry.example/detour:v1}",
		"preset: istio\ninjection: {redirect: init-container, detourImage: registry.example/detour:v1}",
	} {
		m, err := meshconfig.Parse([]byte(mesh))
		if err != nil {
			t.Fatal(err)
		}
		in, err := inject.New(inject.Options{Mesh: m, Bootstrap: webhook.Bootstrap})
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range inputs {
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := in.Manifests(bytes.NewReader(src), &out, ""); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if !strings.Contains(out.String(), inject.ProxyName) {
				t.Errorf("%s: nothing was injected", path)
			}
			for _, obj := range objects(t, out.Bytes()) {
				err := c.Create(ctx, obj, client.DryRunAll, client.FieldValidation("Strict"))
				if err != nil {
					t.Errorf("mesh config %q, %s, %s %s: the API server refuses the injected object: %v", mesh, filepath.Base(path), obj.GetKind(), obj.GetName(), err)
				}
			}
		}
	}
}

// objects decodes a YAML stream, flattening Lists.
func objects(t *testing.T, b []byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if m == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.IsList() {
			l, err := u.ToList()
			if err != nil {
				t.Fatal(err)
			}
			for i := range l.Items {
				out = append(out, &l.Items[i])
			}
			continue
		}
		out = append(out, u)
	}
}
