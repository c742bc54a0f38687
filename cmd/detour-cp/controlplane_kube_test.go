package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/detour-mesh/detour/internal/privtest"
)

// TestControlPlaneKubernetesSource runs `detour-cp control-plane --source
// kubernetes` against a real API server: an opted-in pod shows up in
// /debug/nodes under its node id (name.namespace).
func TestControlPlaneKubernetesSource(t *testing.T) {
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
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := c.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", Annotations: map[string]string{"detour.io/redirect": "enabled"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.PodIP, pod.Status.PodIPs = "10.1.0.10", []corev1.PodIP{{IP: "10.1.0.10"}}
	if _, err := c.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	addrs := make(chan net.Addr, 1)
	o := &controlPlaneOptions{
		source: sourceKubernetes, kubeconfig: kubeconfig, preset: "istio", outboundPolicy: "registry-only",
		xdsAddress: "127.0.0.1:0", httpAddress: "127.0.0.1:0",
		nackBackoff: time.Second, watchInterval: time.Second, logLevel: "info", logFormat: "text",
		listening: func(_, h net.Addr) { addrs <- h },
	}
	done := make(chan error, 1)
	go func() { done <- runControlPlane(ctx, o, streams{out: io.Discard, err: &syncWriter{w: io.Discard}}) }()
	var h net.Addr
	select {
	case h = <-addrs:
	case err := <-done:
		t.Fatalf("control plane stopped: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + h.String() + "/debug/nodes")
		if err == nil {
			var out struct {
				Nodes []struct {
					NodeID string `json:"nodeId"`
					InMesh bool   `json:"inMesh"`
				} `json:"nodes"`
			}
			err = json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			if err == nil && len(out.Nodes) == 1 && out.Nodes[0].NodeID == "web-1.shop" && out.Nodes[0].InMesh {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("web-1.shop never appeared in /debug/nodes (%v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("runControlPlane = %v", err)
	}

}
