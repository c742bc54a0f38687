package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/detour-mesh/detour/internal/privtest"
)

const deployment = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: example.com/web:1}]
`

func TestInjectCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	manifest := filepath.Join(dir, "deploy.yaml")
	mesh := filepath.Join(dir, "mesh.yaml")
	badMesh := filepath.Join(dir, "bad-mesh.yaml")
	// detour inject runs in no pod: it has no image of its own to give the
	// detour-init container.
	noImage := filepath.Join(dir, "no-image.yaml")
	for p, b := range map[string]string{manifest: deployment, mesh: "preset: istio\n", badMesh: "injection: {sidecar: always}\n",
		noImage: "injection: {redirect: init-container}\n"} {
		if err := os.WriteFile(p, []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exec := func(stdin string, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
		return code, out.String(), errb.String()
	}

	code, injected, stderr := exec("", "inject", "-f", manifest, "--mesh-config", mesh, "--sidecar", "classic")
	if code != 0 {
		t.Fatalf("inject: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"name: detour-proxy", "runAsUser: 1337", "sidecar.detour.io/status", `"sidecar":"classic"`} {
		if !strings.Contains(injected, want) {
			t.Errorf("injected manifest lacks %q:\n%s", want, injected)
		}
	}
	// Stdin, and idempotent.
	code, again, stderr := exec(injected, "inject", "-f", "-", "--mesh-config", mesh, "--sidecar", "classic")
	if code != 0 || again != injected {
		t.Errorf("injecting the output again: exit %d (%s), changed: %v", code, stderr, again != injected)
	}
	code, plain, stderr := exec(injected, "inject", "-f", "-", "--uninject")
	if code != 0 || strings.Contains(plain, "detour") {
		t.Errorf("uninject: exit %d (%s):\n%s", code, stderr, plain)
	}

	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		want  string
	}{
		{"no file", "", []string{"inject"}, "-f/--filename is required"},
		{"missing file", "", []string{"inject", "-f", filepath.Join(dir, "nope.yaml")}, "nope.yaml"},
		{"bad sidecar", "", []string{"inject", "-f", manifest, "--sidecar", "always"}, `--sidecar "always"`},
		{"empty sidecar", "", []string{"inject", "-f", manifest, "--sidecar", ""}, "--sidecar: an empty value is refused"},
		{"empty mesh config", "", []string{"inject", "-f", manifest, "--mesh-config", ""}, "--mesh-config: an empty value is refused"},
		{"bad mesh config", "", []string{"inject", "-f", manifest, "--mesh-config", badMesh}, `injection.sidecar: "always"`},
		{"init-container mode without detourImage", "", []string{"inject", "-f", manifest, "--mesh-config", noImage}, `injection.detourImage: "" is unset`},
		{"bad annotation", strings.Replace(deployment, "labels: {app: web}}", "labels: {app: web}, annotations: {detour.io/proxy-uid: nobody}}", 1),
			[]string{"inject", "-f", "-"}, "detour.io/proxy-uid"},
		{"not yaml", "kind: [", []string{"inject", "-f", "-"}, "document 1"},
		{"empty namespace", "", []string{"inject", "-f", manifest, "-n", ""}, "--namespace: an empty value is refused"},
		{"bad namespace", "", []string{"inject", "-f", manifest, "--namespace", "Kube_System"}, `--namespace "Kube_System" is not a namespace name`},
		{"namespace with uninject", "", []string{"inject", "-f", manifest, "--uninject", "-n", "shop"}, "--namespace do not apply"},
	} {
		code, out, stderr := exec(tc.stdin, tc.args...)
		if code != exitUsage || out != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2, nothing printed, an error naming %q", tc.name, code, out, stderr, tc.want)
		}
	}
}

// TestInjectLeavesSystemNamespaces: `detour inject` leaves workloads of
// kube-system and detour-system as they are, as the webhook does (it injected
// them before 2026-12-05): by their metadata.namespace, or by -n for
// manifests that name none.
func TestInjectLeavesSystemNamespaces(t *testing.T) {
	t.Parallel()
	inNamespace := func(ns string) string {
		return strings.Replace(deployment, "namespace: shop", "namespace: "+ns, 1)
	}
	noNamespace := strings.Replace(deployment, ", namespace: shop", "", 1)
	for _, tc := range []struct {
		name, stdin string
		args        []string
		injected    bool
	}{
		{"kube-system", inNamespace("kube-system"), nil, false},
		{"detour-system", inNamespace("detour-system"), nil, false},
		{"shop", inNamespace("shop"), nil, true},
		{"no namespace, -n kube-system", noNamespace, []string{"-n", "kube-system"}, false},
		{"no namespace, --namespace detour-system", noNamespace, []string{"--namespace", "detour-system"}, false},
		{"no namespace, -n shop", noNamespace, []string{"-n", "shop"}, true},
		{"no namespace, no -n", noNamespace, nil, true},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"inject", "-f", "-"}, tc.args...), strings.NewReader(tc.stdin), &out, &errb)
		if code != exitOK {
			t.Errorf("%s: exit %d: %s", tc.name, code, errb.String())
			continue
		}
		if got := strings.Contains(out.String(), "detour-proxy"); got != tc.injected {
			t.Errorf("%s: injected = %v, want %v:\n%s", tc.name, got, tc.injected, out.String())
		}
	}
}

// TestControlPlaneInjects runs `detour-cp control-plane --source kubernetes
// --inject` against a real API server: it registers its webhook (served over
// TLS with a self-generated certificate) and a pod created in a labelled
// namespace comes back with the sidecar of the mesh config it was given.
func TestControlPlaneInjects(t *testing.T) {
	t.Parallel()
	env := &envtest.Environment{BinaryAssetsDirectory: privtest.KubeAssets(t)}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube-apiserver and etcd: %v", err)
		}
	})
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	mesh := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mesh, []byte("preset: istio\ninjection: {controlPlane: 'xds.example:15010'}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"detour.io/inject": "enabled"}}}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	webhookAddr := ln.Addr().String()
	ln.Close()

	o := &controlPlaneOptions{
		source: sourceKubernetes, kubeconfig: kubeconfig, meshConfig: mesh, outboundPolicy: "allow-any",
		xdsAddress: "127.0.0.1:0", httpAddress: "127.0.0.1:0",
		nackBackoff: time.Second, watchInterval: time.Second, logLevel: "info", logFormat: "text",
		inject: injectionFlags{enabled: true, address: webhookAddr, url: "https://" + webhookAddr, failurePolicy: "Fail", rotateEvery: time.Hour},
	}
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- runControlPlane(ctx, o, streams{out: io.Discard, err: &syncWriter{w: &stderr}}) }()

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/web:1"}}},
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := c.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && len(got.Spec.InitContainers) > 0 {
			p := got.Spec.InitContainers[0]
			if p.Name != "detour-proxy" || *p.SecurityContext.RunAsUser != 1337 || !strings.Contains(strings.Join(p.Args, " "), `"address":"xds.example","portValue":15010`) {
				t.Errorf("injected %s as uid %d with args %v: want detour-proxy as the istio preset's 1337, dialing xds.example:15010", p.Name, *p.SecurityContext.RunAsUser, p.Args)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pod was never injected (last: %v)\n%s", err, stderr.String())
		}
		select {
		case err := <-done:
			t.Fatalf("control plane stopped: %v\n%s", err, stderr.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("runControlPlane = %v", err)
	}

	// A webhook that cannot start stops the control plane with its error:
	// it stopped with exit 0 and nothing said, serving nothing.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	o.inject.address = busy.Addr().String()
	o.inject.url = "https://" + busy.Addr().String()
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	stderr.Reset()
	err = runControlPlane(ctx2, o, streams{out: io.Discard, err: &syncWriter{w: &stderr}})
	if err == nil || !strings.Contains(err.Error(), "listen for the webhook") || ctx2.Err() != nil {
		t.Errorf("runControlPlane with the webhook's address in use = %v (context %v); want its listen error at once\n%s", err, ctx2.Err(), stderr.String())
	}
}
