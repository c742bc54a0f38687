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
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/detour-mesh/detour/cni"
	"github.com/detour-mesh/detour/cni/install"
	"github.com/detour-mesh/detour/internal/kubeapi"
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
		"Namespace/detour-system", "ResourceQuota/detour-critical-pods", "ServiceAccount/detour-cni", "ServiceAccount/detour-cni-plugin",
		"ServiceAccount/detour-control-plane", "Role/detour-cni", "RoleBinding/detour-cni",
		"ClusterRole/detour-cni-plugin", "ClusterRoleBinding/detour-cni-plugin", "ClusterRole/detour-control-plane",
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
		for _, want := range []string{"detour cni install", "--bin-dir=/opt/cni/bin", "--conf-dir=/etc/cni/net.d", "--cleanup-on-exit", "detour-system",
			"--plugin-service-account=detour-system/detour-cni-plugin", "--node-name=$(NODE_NAME)", "--daemonset=detour-system/detour-cni-node"} {
			if !strings.Contains(args, want) {
				t.Errorf("installer command %q lacks %q", args, want)
			}
		}
		if len(ctr.Env) != 1 || ctr.Env[0].Name != "NODE_NAME" || ctr.Env[0].ValueFrom == nil || ctr.Env[0].ValueFrom.FieldRef == nil || ctr.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
			t.Errorf("env %v, want NODE_NAME from spec.nodeName", ctr.Env)
		}
		// The readiness probe checks the same directories the installer writes.
		if p := ctr.ReadinessProbe; p == nil || p.Exec == nil {
			t.Errorf("readiness probe %v, want `detour cni ready`", p)
		} else if probe := strings.Join(p.Exec.Command, " "); !strings.HasPrefix(probe, "/usr/local/bin/detour cni ready ") ||
			!strings.Contains(probe, "--bin-dir=/opt/cni/bin") || !strings.Contains(probe, "--conf-dir=/etc/cni/net.d") {
			t.Errorf("readiness probe %q, want detour cni ready with the installer's --bin-dir and --conf-dir", probe)
		}
		mounts := map[string]string{}
		for _, vm := range ctr.VolumeMounts {
			mounts[vm.Name] = vm.MountPath
		}
		for _, v := range spec.Volumes {
			if v.ConfigMap != nil {
				// The mesh-wide config the installer reads (--mesh-config).
				if v.ConfigMap.Name != "detour-config" || mounts[v.Name] != "/etc/detour" || !strings.Contains(args, "--mesh-config=/etc/detour/config.yaml") {
					t.Errorf("volume %s: configMap %s mounted at %q with args %q; want detour-config at /etc/detour, read with --mesh-config", v.Name, v.ConfigMap.Name, mounts[v.Name], args)
				}
				continue
			}
			if v.HostPath == nil || mounts[v.Name] != v.HostPath.Path {
				t.Errorf("volume %s: hostPath %v mounted at %q; the installer writes node paths, so they must match", v.Name, v.HostPath, mounts[v.Name])
			}
		}
		if len(spec.Volumes) != 3 {
			t.Errorf("%d volumes, want the CNI bin and conf dirs and the mesh config", len(spec.Volumes))
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
			{"detour-cni-plugin",
				[]access{{"get", "", "pods", "default"}, {"get", "", "namespaces", ""}},
				[]access{{"list", "", "pods", ""}, {"watch", "", "pods", ""}, {"list", "", "namespaces", ""}, {"list", "", "secrets", ""}, {"create", "", "pods", "default"}, {"update", "", "namespaces", ""}, {"list", "", "services", ""}}},
			{"detour-cni",
				[]access{{"create", "", "serviceaccounts/token:detour-cni-plugin", "detour-system"}, {"get", "apps", "daemonsets:detour-cni-node", "detour-system"}},
				[]access{{"create", "", "serviceaccounts/token:detour-control-plane", "detour-system"}, {"create", "", "serviceaccounts/token:default", "default"}, {"get", "", "pods", "default"}, {"get", "", "secrets", "detour-system"}, {"get", "apps", "daemonsets:other", "detour-system"}}},
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

	t.Run("control plane runs as its service account", func(t *testing.T) {
		testControlPlaneAsItsServiceAccount(ctx, t, cfg, cs)
	})

	t.Run("plugin token hand-over between installer pods", func(t *testing.T) {
		testTokenHandOver(ctx, t, cfg, cs)
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
	// resource may name a subresource (serviceaccounts/token) and an object
	// (daemonsets:detour-cni-node).
	resource, name, _ := strings.Cut(a.resource, ":")
	resource, sub, _ := strings.Cut(resource, "/")
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User:   user,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
		ResourceAttributes: &authzv1.ResourceAttributes{
			Verb: a.verb, Group: a.group, Resource: resource, Subresource: sub, Name: name, Namespace: a.namespace,
		},
	}}
	res, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("access review: %v", err)
	}
	return res.Status.Allowed
}

// testTokenHandOver plays the DaemonSet on one node against the real API
// server: installer pods whose tokens are bound to them (as the kubelet's
// projected tokens are), and the plugin reading pods through the kubeconfig the
// installer wrote, with the plugin's own reader, all along. The plugin's token
// is its own service account's, bound to the node: deleting the installer pod
// kills the installer's token but not the plugin's, so reads never fail
// between the old pod's end and the new pod's start. On SIGTERM the installer
// leaves everything while its DaemonSet exists, and removes it once the
// DaemonSet is deleted.
func testTokenHandOver(ctx context.Context, t *testing.T, cfg *rest.Config, cs *kubernetes.Clientset) {
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
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "default", Annotations: map[string]string{"detour.io/redirect": "enabled"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "web"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// installerPod creates an installer pod object and writes a token of
	// detour-cni bound to it where the installer reads its token.
	installerPod := func(name string) *corev1.Pod {
		t.Helper()
		p, err := cs.CoreV1().Pods("detour-system").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.PodSpec{ServiceAccountName: "detour-cni", Containers: []corev1.Container{{Name: "install-cni", Image: "detour"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		exp := int64(3600)
		tr, err := cs.CoreV1().ServiceAccounts("detour-system").CreateToken(ctx, "detour-cni", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("request a token for detour-cni bound to %s: %v", name, err)
		}
		writeFile(t, filepath.Join(sa, "token"), tr.Status.Token)
		return p
	}
	opts := install.Options{
		PluginBinary:         filepath.Join(root, "detour-cni"),
		BinDir:               bin,
		ConfDir:              conf,
		Server:               cfg.Host,
		TokenFile:            filepath.Join(sa, "token"),
		CAFile:               filepath.Join(sa, "ca.crt"),
		PluginServiceAccount: "detour-system/detour-cni-plugin",
		NodeName:             "node-a",
		Logger:               slog.New(slog.DiscardHandler),
	}
	kubeconfig := filepath.Join(conf, install.DefaultKubeconfigName)
	old := installerPod("detour-cni-node-old")
	if _, err := install.New(opts).Install(ctx); err != nil {
		t.Fatalf("Install against %s: %v", cfg.Host, err)
	}
	// readPod reads web-0 as the plugin does on every ADD.
	readPod := func() error {
		c, err := cni.NewKubeClient(kubeconfig, 5*time.Second)
		if err != nil {
			return err
		}
		p, err := c.Pod(ctx, "default", "web-0")
		if err == nil && p.Metadata.Annotations["detour.io/redirect"] != "enabled" {
			return errors.New("the pod read through the kubeconfig lacks its annotation")
		}
		return err
	}
	if err := readPod(); err != nil {
		t.Fatalf("read the pod with the plugin's kubeconfig: %v", err)
	}
	// The plugin's identity gets pods and namespaces, and nothing more.
	kcfg, err := kubeapi.Load(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := kubeapi.New(kcfg, kubeapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/api/v1/pods", "/api/v1/namespaces/default/secrets"} {
		if err := pc.Get(ctx, path, &struct{}{}); kubeapi.Code(err) != 403 {
			t.Errorf("GET %s with the plugin's kubeconfig: %v, want 403", path, err)
		}
	}

	// From here through the new installer's start, the plugin reads
	// continuously: never a failure.
	var (
		mu       sync.Mutex
		failures []error
		reads    int
	)
	stopReading := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stopReading:
				return
			case <-time.After(20 * time.Millisecond):
			}
			err := readPod()
			mu.Lock()
			reads++
			if err != nil {
				failures = append(failures, err)
			}
			mu.Unlock()
		}
	}()

	// The old installer pod is gone: its token no longer authenticates.
	zero := int64(0)
	if err := cs.CoreV1().Pods("detour-system").Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	oldClient, err := kubeapi.New(kubeapi.Config{Server: cfg.Host, CA: cfg.CAData, TokenFile: filepath.Join(sa, "token")}, kubeapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := oldClient.Get(ctx, "/apis/apps/v1/namespaces/detour-system/daemonsets/detour-cni-node", &struct{}{})
		if kubeapi.Code(err) == 401 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted installer pod's token still authenticates: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // the plugin keeps reading with no installer at all
	installerPod("detour-cni-node-new")
	if _, err := install.New(opts).Install(ctx); err != nil {
		t.Fatalf("the new installer's Install: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	close(stopReading)
	<-readerDone
	mu.Lock()
	if reads < 10 {
		t.Errorf("only %d reads during the hand-over", reads)
	}
	for _, err := range failures {
		t.Errorf("a plugin read failed during the hand-over: %v", err)
	}
	mu.Unlock()

	// A missing (or due) plugin token is requested anew with the new
	// installer pod's token.
	if err := os.Remove(filepath.Join(conf, install.DefaultTokenName)); err != nil {
		t.Fatal(err)
	}
	if changes, err := install.New(opts).Install(ctx); err != nil || len(changes) != 1 {
		t.Fatalf("renewal: %q, %v; want the token file rewritten", changes, err)
	}
	if err := readPod(); err != nil {
		t.Fatalf("read the pod with the renewed token: %v", err)
	}

	// SIGTERM while the DaemonSet exists (a rolling update): everything stays.
	runUntilStopped := func() {
		t.Helper()
		o := opts
		o.CleanupOnExit, o.DaemonSet = true, "detour-system/detour-cni-node"
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		in := install.New(o)
		go func() { done <- in.Run(rctx) }()
		deadline := time.Now().Add(20 * time.Second)
		for in.Ready() != nil {
			if time.Now().After(deadline) {
				t.Fatalf("installer never ready: %v", in.Ready())
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The node may have been ready before Run started: give its first
		// install (a no-op then) time to finish, so SIGTERM finds it watching.
		time.Sleep(500 * time.Millisecond)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run = %v", err)
		}
	}
	runUntilStopped()
	if err := readPod(); err != nil {
		t.Errorf("after an installer pod's SIGTERM with its DaemonSet in place: %v", err)
	}
	// SIGTERM after the DaemonSet is deleted: the node is cleaned up.
	if err := cs.AppsV1().DaemonSets("detour-system").Delete(ctx, "detour-cni-node", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	runUntilStopped()
	for _, f := range []string{kubeconfig, filepath.Join(conf, install.DefaultTokenName), filepath.Join(bin, "detour-cni")} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after the DaemonSet was deleted: %v", f, err)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
