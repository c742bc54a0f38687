package deploy

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// baselineAdmission enforces the baseline Pod Security Standard in every
// namespace without a label of its own, as hardened clusters (Talos, for
// one) configure their API servers.
const baselineAdmission = `apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: PodSecurity
    configuration:
      apiVersion: pod-security.admission.config.k8s.io/v1
      kind: PodSecurityConfiguration
      defaults:
        enforce: baseline
        enforce-version: latest
      exemptions: {usernames: [], runtimeClasses: [], namespaces: []}
`

// TestPodsAdmittedWhereBaselineIsEnforced: on an API server that enforces the
// baseline Pod Security Standard by default, the pods of every workload in
// deploy/kubernetes are admitted. The CNI installer needs the host network
// and hostPath mounts, which baseline forbids: detour-system must say it runs
// privileged pods, or the DaemonSet creates no pod and no node gets the plugin.
func TestPodsAdmittedWhereBaselineIsEnforced(t *testing.T) {
	t.Parallel()
	c, cs := apiServerWithAdmission(t, baselineAdmission)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The check is only worth something if this API server refuses what
	// baseline forbids.
	hostNet := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "host-net", Namespace: "default"},
		Spec: corev1.PodSpec{HostNetwork: true, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, hostNet, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err == nil || !strings.Contains(err.Error(), "baseline") {
		t.Fatalf("a host-network pod in an unlabelled namespace was %v; want it refused under baseline (else this API server enforces nothing)", err)
	}

	checked := 0
	for _, m := range readManifests(t, manifestDir) {
		if strings.HasPrefix(m.file, "examples/") {
			continue // the user's workloads, in the user's namespaces
		}
		if err := apply(ctx, c, m); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		var spec corev1.PodSpec
		switch m.obj.GetKind() {
		case "DaemonSet":
			var ds appsv1.DaemonSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m.obj.Object, &ds); err != nil {
				t.Fatal(err)
			}
			spec = ds.Spec.Template.Spec
		case "Deployment":
			var d appsv1.Deployment
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m.obj.Object, &d); err != nil {
				t.Fatal(err)
			}
			spec = d.Spec.Template.Spec
		default:
			continue
		}
		// Pod admission needs the objects the pod names (its service account,
		// its config map) only at run time; the security check is all here.
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: m.obj.GetName() + "-", Namespace: m.obj.GetNamespace()}, Spec: spec}
		if _, err := cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Errorf("%s: its pod is refused where baseline is enforced by default: %v", m, err)
		}
		checked++
	}
	if checked != 2 {
		t.Errorf("%d workloads checked, want the DaemonSet and the control plane's Deployment", checked)
	}
}
