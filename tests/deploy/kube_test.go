package deploy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/detour-mesh/detour/cni/install"
	"github.com/detour-mesh/detour/internal/privtest"
)

const manifestDir = "../../deploy/kubernetes"

// startAPIServer runs a real kube-apiserver and etcd on loopback for t.
func startAPIServer(t *testing.T) *rest.Config {
	t.Helper()
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
	return cfg
}

// manifest is one object of a YAML file.
type manifest struct {
	file string
	obj  *unstructured.Unstructured
}

func (m manifest) String() string {
	return m.file + ":" + m.obj.GetKind() + "/" + m.obj.GetName()
}

// readManifests returns every object in the YAML files under dir (not
// kustomization.yaml, which is kustomize's, not the API server's), in file
// order, so the namespace comes first.
func readManifests(t *testing.T, dir string) []manifest {
	t.Helper()
	var files []string
	for _, pattern := range []string{"*.yaml", "examples/*.yaml"} {
		m, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(m)
		files = append(files, m...)
	}
	var out []manifest
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, decodeManifests(t, filepath.ToSlash(strings.TrimPrefix(f, dir+"/")), b)...)
	}
	return out
}

func decodeManifests(t *testing.T, name string, b []byte) []manifest {
	t.Helper()
	var out []manifest
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: not YAML: %v", name, err)
		}
		if m == nil {
			continue
		}
		out = append(out, manifest{file: name, obj: &unstructured.Unstructured{Object: m}})
	}
}

// apply server-side applies m with strict field validation, so a misspelt or
// misplaced field is an error rather than silently dropped.
func apply(ctx context.Context, c client.Client, m manifest) error {
	obj := m.obj.DeepCopy()
	//nolint:staticcheck // client.Apply as a patch keeps FieldValidation, which client.Client.Apply lacks.
	return c.Patch(ctx, obj, client.Apply, client.FieldOwner("detour-test"), client.ForceOwnership, client.FieldValidation("Strict"))
}

func TestManifests(t *testing.T) {
	cfg := startAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)

	manifests := readManifests(t, manifestDir)
	kinds := map[string]bool{}
	for _, m := range manifests {
		kinds[m.obj.GetKind()+"/"+m.obj.GetName()] = true
	}
	for _, want := range []string{
		"Namespace/detour-system", "ServiceAccount/detour-cni", "ServiceAccount/detour-control-plane",
		"ClusterRole/detour-cni", "ClusterRoleBinding/detour-cni", "ClusterRole/detour-control-plane",
		"ClusterRoleBinding/detour-control-plane", "DaemonSet/detour-cni-node", "Deployment/detour-control-plane",
		"Service/detour-control-plane", "Deployment/httpbin", "Deployment/reviews",
	} {
		if !kinds[want] {
			t.Errorf("deploy/kubernetes has no %s", want)
		}
	}

	t.Run("apply", func(t *testing.T) {
		for _, m := range manifests {
			if err := apply(ctx, c, m); err != nil {
				t.Errorf("%s: the API server refuses it: %v", m, err)
			}
		}
		// Applying again is a no-op, as `kubectl apply` on an upgrade would be.
		for _, m := range manifests {
			if err := apply(ctx, c, m); err != nil {
				t.Errorf("%s: re-apply: %v", m, err)
			}
		}
	})
	if t.Failed() {
		return
	}

	t.Run("strict validation catches a mistake", func(t *testing.T) {
		// The check above is only worth something if a wrong manifest fails it.
		bad := decodeManifests(t, "bad.yaml", []byte(`
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: bad, namespace: detour-system}
spec:
  selector: {matchLabels: {app: bad}}
  template:
    metadata: {labels: {app: bad}}
    spec:
      containers:
        - name: c
          image: x
          volumeMount: [{name: v, mountPath: /v}]
`))[0]
		if err := apply(ctx, c, bad); err == nil || !strings.Contains(err.Error(), "volumeMount") {
			t.Errorf("a misspelt field was accepted: %v", err)
		}
	})

	t.Run("daemonset", func(t *testing.T) {
		ds, err := cs.AppsV1().DaemonSets("detour-system").Get(ctx, "detour-cni-node", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		spec := ds.Spec.Template.Spec
		ctr := spec.Containers[0]
		args := strings.Join(append(ctr.Command, ctr.Args...), " ")
		for _, want := range []string{"detour cni install", "--bin-dir=/opt/cni/bin", "--conf-dir=/etc/cni/net.d", "--cleanup-on-exit", "detour-system"} {
			if !strings.Contains(args, want) {
				t.Errorf("installer command %q lacks %q", args, want)
			}
		}
		mounts := map[string]string{}
		for _, vm := range ctr.VolumeMounts {
			mounts[vm.Name] = vm.MountPath
		}
		for _, v := range spec.Volumes {
			if v.HostPath == nil || mounts[v.Name] != v.HostPath.Path {
				t.Errorf("volume %s: hostPath %v mounted at %q; the installer writes node paths, so they must match", v.Name, v.HostPath, mounts[v.Name])
			}
		}
		if len(spec.Volumes) != 2 {
			t.Errorf("%d volumes, want the CNI bin and conf dirs", len(spec.Volumes))
		}
		if !spec.HostNetwork || spec.ServiceAccountName != "detour-cni" || spec.PriorityClassName != "system-node-critical" {
			t.Errorf("hostNetwork %v, serviceAccount %q, priorityClass %q", spec.HostNetwork, spec.ServiceAccountName, spec.PriorityClassName)
		}
		if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
			t.Errorf("tolerations %v, want one that tolerates every taint", spec.Tolerations)
		}
	})

	// Workload objects are accepted without their pods being admitted: create
	// each template's pod (dry run) so that pod admission checks it too — the
	// priority class exists, the service account exists, the pod is valid.
	t.Run("pods are admitted", func(t *testing.T) {
		type templatePod struct {
			owner string
			pod   *corev1.Pod
		}
		var pods []templatePod
		dss, err := cs.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, ds := range dss.Items {
			pods = append(pods, templatePod{"DaemonSet/" + ds.Name, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: ds.Name + "-", Namespace: ds.Namespace, Labels: ds.Spec.Template.Labels, Annotations: ds.Spec.Template.Annotations}, Spec: ds.Spec.Template.Spec}})
		}
		deps, err := cs.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range deps.Items {
			pods = append(pods, templatePod{"Deployment/" + d.Name, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: d.Name + "-", Namespace: d.Namespace, Labels: d.Spec.Template.Labels, Annotations: d.Spec.Template.Annotations}, Spec: d.Spec.Template.Spec}})
		}
		if len(pods) != 4 {
			t.Errorf("%d workloads, want the DaemonSet and three Deployments", len(pods))
		}
		for _, p := range pods {
			if sa := p.pod.Spec.ServiceAccountName; sa != "" {
				if _, err := cs.CoreV1().ServiceAccounts(p.pod.Namespace).Get(ctx, sa, metav1.GetOptions{}); err != nil {
					t.Errorf("%s: service account %s: %v", p.owner, sa, err)
				}
			}
			if _, err := cs.CoreV1().Pods(p.pod.Namespace).Create(ctx, p.pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("%s: its pod is not admitted: %v", p.owner, err)
			}
		}
	})

	t.Run("control plane service selects the deployment", func(t *testing.T) {
		svc, err := cs.CoreV1().Services("detour-system").Get(ctx, "detour-control-plane", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dep, err := cs.AppsV1().Deployments("detour-system").Get(ctx, "detour-control-plane", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		labels := dep.Spec.Template.Labels
		for k, v := range svc.Spec.Selector {
			if labels[k] != v {
				t.Errorf("service selector %s=%s does not match the pod labels %v", k, v, labels)
			}
		}
		ctr := dep.Spec.Template.Spec.Containers[0]
		if got := strings.Join(ctr.Args, " "); !strings.HasPrefix(got, "control-plane --source=kubernetes --xds-address=:15010 ") {
			t.Errorf("control plane args %q: want the kubernetes source, serving on all addresses at the Service's port", got)
		}
		if svc.Spec.Ports[0].TargetPort.StrVal != ctr.Ports[0].Name {
			t.Errorf("service targets port %v, container names %q", svc.Spec.Ports[0].TargetPort, ctr.Ports[0].Name)
		}
	})

	t.Run("init containers", func(t *testing.T) {
		for _, tc := range []struct {
			deploy, name, cmd string
			caps              []corev1.Capability
		}{
			{"httpbin", "detour-init", "detour install", []corev1.Capability{"NET_ADMIN", "NET_RAW"}},
			{"reviews", "detour-validate", "detour validate", []corev1.Capability{"SETUID", "SETGID"}},
		} {
			dep, err := cs.AppsV1().Deployments("default").Get(ctx, tc.deploy, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			ic := dep.Spec.Template.Spec.InitContainers
			if len(ic) == 0 || ic[0].Name != tc.name {
				t.Fatalf("%s: first init container is not %s", tc.deploy, tc.name)
			}
			if cmd := strings.Join(append(ic[0].Command, ic[0].Args...), " "); !strings.Contains(cmd, tc.cmd) {
				t.Errorf("%s: init command %q lacks %q", tc.deploy, cmd, tc.cmd)
			}
			var added []corev1.Capability
			if sc := ic[0].SecurityContext; sc != nil && sc.Capabilities != nil {
				added = sc.Capabilities.Add
			}
			if !slices.Equal(added, tc.caps) {
				t.Errorf("%s: capabilities added %v, want %v", tc.deploy, added, tc.caps)
			}
		}
	})

	// The RBAC grants what each component reads, and nothing else.
	t.Run("rbac", func(t *testing.T) {
		for _, tc := range []struct {
			sa            string
			allow, refuse []access
		}{
			{"detour-cni",
				[]access{{"get", "", "pods", "default"}, {"list", "", "pods", ""}, {"get", "", "namespaces", ""}, {"watch", "", "namespaces", ""}},
				[]access{{"list", "", "secrets", ""}, {"create", "", "pods", "default"}, {"update", "", "namespaces", ""}, {"list", "", "services", ""}}},
			{"detour-control-plane",
				[]access{{"list", "", "services", ""}, {"watch", "discovery.k8s.io", "endpointslices", ""}, {"list", "", "pods", ""}, {"get", "", "namespaces", ""},
					// The injection webhook writes its own configuration.
					{"create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""}},
				[]access{{"get", "", "secrets", "default"}, {"delete", "", "pods", "default"}, {"create", "discovery.k8s.io", "endpointslices", "default"},
					{"delete", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""},
					{"update", "admissionregistration.k8s.io", "validatingwebhookconfigurations", ""}}},
		} {
			user := "system:serviceaccount:detour-system:" + tc.sa
			for _, a := range tc.allow {
				if !a.allowed(ctx, t, cs, user) {
					t.Errorf("%s cannot %s", tc.sa, a)
				}
			}
			for _, a := range tc.refuse {
				if a.allowed(ctx, t, cs, user) {
					t.Errorf("%s can %s; it should not", tc.sa, a)
				}
			}
		}
	})

	t.Run("plugin kubeconfig works with the service account token", func(t *testing.T) {
		testInstallerKubeconfig(ctx, t, cfg, cs)
	})
}

type access struct{ verb, group, resource, namespace string }

func (a access) String() string {
	return a.verb + " " + a.resource + "." + a.group + " in " + a.namespace
}

// allowed asks the API server's authorizer (RBAC) whether the service account
// user may do a.
func (a access) allowed(ctx context.Context, t *testing.T, admin *kubernetes.Clientset, user string) bool {
	t.Helper()
	ns := strings.Split(user, ":")[2]
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User:   user,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
		ResourceAttributes: &authzv1.ResourceAttributes{
			Verb: a.verb, Group: a.group, Resource: a.resource, Namespace: a.namespace,
		},
	}}
	res, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("access review: %v", err)
	}
	return res.Status.Allowed
}

// testInstallerKubeconfig runs the CNI installer with a real service account
// token and CA from the API server, then uses the kubeconfig it wrote — as the
// plugin does on a node — to read a pod; a rotated token is picked up.
func testInstallerKubeconfig(ctx context.Context, t *testing.T, cfg *rest.Config, cs *kubernetes.Clientset) {
	root := t.TempDir()
	bin, conf, sa := filepath.Join(root, "bin"), filepath.Join(root, "net.d"), filepath.Join(root, "sa")
	for _, d := range []string{bin, conf, sa} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(root, "detour-cni"), "plugin")
	writeFile(t, filepath.Join(conf, "10-kindnet.conflist"), `{"cniVersion":"0.3.1","name":"kindnet","plugins":[{"type":"ptp"},{"type":"portmap","capabilities":{"portMappings":true}}]}`)
	writeFile(t, filepath.Join(sa, "ca.crt"), string(cfg.CAData))
	token := func() string {
		t.Helper()
		exp := int64(600)
		tr, err := cs.CoreV1().ServiceAccounts("detour-system").CreateToken(ctx, "detour-cni",
			&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("request a token for detour-cni: %v", err)
		}
		return tr.Status.Token
	}
	writeFile(t, filepath.Join(sa, "token"), token())

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "default", Annotations: map[string]string{"detour.io/redirect": "enabled"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "web"}}},
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	in := install.New(install.Options{
		PluginBinary: filepath.Join(root, "detour-cni"),
		BinDir:       bin,
		ConfDir:      conf,
		Server:       cfg.Host,
		TokenFile:    filepath.Join(sa, "token"),
		CAFile:       filepath.Join(sa, "ca.crt"),
		Logger:       slog.New(slog.DiscardHandler),
	})
	if _, err := in.Install(ctx); err != nil {
		t.Fatalf("Install against %s: %v", cfg.Host, err)
	}
	readPod := func() error {
		t.Helper()
		kc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(conf, install.DefaultKubeconfigName))
		if err != nil {
			t.Fatalf("load the written kubeconfig: %v", err)
		}
		pcs, err := kubernetes.NewForConfig(kc)
		if err != nil {
			t.Fatal(err)
		}
		p, err := pcs.CoreV1().Pods("default").Get(ctx, "web-0", metav1.GetOptions{})
		if err == nil && p.Annotations["detour.io/redirect"] != "enabled" {
			t.Errorf("pod read through the kubeconfig lacks its annotation: %v", p.Annotations)
		}
		if err == nil {
			// The plugin's identity reads pods and nothing more.
			_, serr := pcs.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{})
			if !apierrors.IsForbidden(serr) {
				t.Errorf("listing secrets with the plugin's kubeconfig: %v, want forbidden", serr)
			}
		}
		return err
	}
	if err := readPod(); err != nil {
		t.Fatalf("read the pod with the installer's kubeconfig: %v", err)
	}

	// Rotation: a new token replaces the old one in the kubeconfig.
	before, _ := os.ReadFile(filepath.Join(conf, install.DefaultKubeconfigName))
	writeFile(t, filepath.Join(sa, "token"), token())
	if changes, err := in.Install(ctx); err != nil || len(changes) != 1 {
		t.Fatalf("Install after rotation = %q, %v; want the kubeconfig rewritten", changes, err)
	}
	after, _ := os.ReadFile(filepath.Join(conf, install.DefaultKubeconfigName))
	if bytes.Equal(before, after) {
		t.Fatal("kubeconfig unchanged after the token rotated")
	}
	if err := readPod(); err != nil {
		t.Fatalf("read the pod after rotation: %v", err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
