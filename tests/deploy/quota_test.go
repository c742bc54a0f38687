package deploy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/detour-mesh/detour/internal/privtest"
)

// gkeAdmission limits the critical priority classes to namespaces with a
// matching quota, as GKE configures its API servers.
const gkeAdmission = `apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: ResourceQuota
    configuration:
      apiVersion: apiserver.config.k8s.io/v1
      kind: ResourceQuotaConfiguration
      limitedResources:
        - resource: pods
          matchScopes:
            - scopeName: PriorityClass
              operator: In
              values: ["system-node-critical", "system-cluster-critical"]
`

// TestCriticalPodQuota: on an API server that admits system-node-critical pods
// only where a quota covers them (GKE), the DaemonSet's pod is refused in
// detour-system without the shipped ResourceQuota and admitted with it.
func TestCriticalPodQuota(t *testing.T) {
	t.Parallel()
	c, cs := apiServerWithAdmission(t, gkeAdmission)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var quota, daemonSet manifest
	for _, m := range readManifests(t, manifestDir) {
		switch m.obj.GetKind() + "/" + m.obj.GetName() {
		case "Namespace/detour-system":
			if err := apply(ctx, c, m); err != nil {
				t.Fatal(err)
			}
		case "ResourceQuota/detour-critical-pods":
			quota = m
		case "DaemonSet/detour-cni-node":
			daemonSet = m
		}
	}
	if quota.obj == nil || daemonSet.obj == nil {
		t.Fatal("deploy/kubernetes lacks the quota or the DaemonSet")
	}
	var ds appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(daemonSet.obj.Object, &ds); err != nil {
		t.Fatal(err)
	}
	createPod := func() error {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "detour-cni-node-", Namespace: "detour-system"}, Spec: ds.Spec.Template.Spec}
		_, err := cs.CoreV1().Pods("detour-system").Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err
	}
	if err := createPod(); err == nil || !strings.Contains(err.Error(), "insufficient quota") {
		t.Fatalf("without the quota the pod was %v; want it refused for want of a quota (else this API server does not limit critical pods and proves nothing)", err)
	}
	if err := apply(ctx, c, quota); err != nil {
		t.Fatalf("%s: %v", quota, err)
	}
	// The quota controller does not run here; the admission plugin reads the
	// quota object as soon as its informer has it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := createPod()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with the quota the pod is still refused: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// apiServerWithAdmission starts a kube-apiserver (and etcd) whose admission
// plugins are configured by admission (an AdmissionConfiguration), stopped
// at the test's end, and returns two clients of it. It skips with -short.
func apiServerWithAdmission(t *testing.T, admission string) (client.Client, *kubernetes.Clientset) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	cfgFile := filepath.Join(t.TempDir(), "admission.yaml")
	if err := os.WriteFile(cfgFile, []byte(admission), 0o600); err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{BinaryAssetsDirectory: privtest.KubeAssets(t)}
	env.ControlPlane.GetAPIServer().Configure().Set("admission-control-config-file", cfgFile)
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube-apiserver and etcd: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c, kubernetes.NewForConfigOrDie(cfg)
}
