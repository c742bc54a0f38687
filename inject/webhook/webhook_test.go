package webhook_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/detour-mesh/detour/inject"
	"github.com/detour-mesh/detour/inject/webhook"
	"github.com/detour-mesh/detour/internal/privtest"
)

// startAPIServer runs a real kube-apiserver and etcd on loopback for t.
func startAPIServer(t testing.TB) *rest.Config {
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

type cluster struct {
	cs     kubernetes.Interface
	server *webhook.Server
	addr   string
}

// startWebhook serves the webhook on loopback and registers it with the API
// server through the MutatingWebhookConfiguration it writes itself.
func startWebhook(t testing.TB, ctx context.Context, cfg *rest.Config, observe func(time.Duration)) *cluster {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(cfg)
	owner := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "detour-injector"}}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, owner, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	s, err := webhook.New(ctx, webhook.Options{
		Client:        cs,
		Bootstrap:     webhook.Bootstrap,
		Listener:      ln,
		IPs:           []net.IP{net.IPv4(127, 0, 0, 1)},
		RotateEvery:   time.Hour,
		ActivateDelay: 2 * time.Second,
		Configuration: webhook.ConfigurationOptions{URL: "https://" + addr, OwnerClusterRole: "detour-injector"},
		Observe:       observe,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	rctx, cancel := context.WithCancel(ctx)
	go func() { done <- s.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("webhook server: %v", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("webhook server: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("webhook server not ready")
	}
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "meshed", Labels: map[string]string{"detour.io/inject": "enabled"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "typo", Labels: map[string]string{"detour.io/inject": "true"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "typo-yes", Labels: map[string]string{"detour.io/inject": "yes"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "off-false", Labels: map[string]string{"detour.io/inject": "false"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "off-no", Labels: map[string]string{"detour.io/inject": "no"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "off-empty", Labels: map[string]string{"detour.io/inject": ""}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "off-disabled", Labels: map[string]string{"detour.io/inject": "disabled"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "detour-system", Labels: map[string]string{"detour.io/inject": "enabled"}}},
	} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c := &cluster{cs: cs, server: s, addr: addr}
	c.waitAnswering(t, ctx)
	return c
}

// waitAnswering waits until the API server has loaded the configuration: a
// dry-run pod of the labelled namespace comes back injected.
func (c *cluster) waitAnswering(t testing.TB, ctx context.Context) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := c.create(ctx, "meshed", testPod("probe", nil), true)
		if err == nil && isInjected(p) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API server never called the webhook: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *cluster) create(ctx context.Context, ns string, p *corev1.Pod, dryRun bool) (*corev1.Pod, error) {
	o := metav1.CreateOptions{FieldValidation: "Strict"}
	if dryRun {
		o.DryRun = []string{metav1.DryRunAll}
	}
	return c.cs.CoreV1().Pods(ns).Create(ctx, p, o)
}

func testPod(name string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "migrate", Image: "example.com/migrate:1"}},
			Containers:     []corev1.Container{{Name: "app", Image: "example.com/app:1"}},
		},
	}
}

func isInjected(p *corev1.Pod) bool {
	_, ok := p.Annotations[inject.AnnotationStatus]
	return ok
}

func proxies(p *corev1.Pod) []corev1.Container {
	var out []corev1.Container
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		if c.Name == inject.ProxyName {
			out = append(out, c)
		}
	}
	return out
}

func TestWebhook(t *testing.T) {
	cfg := startAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := startWebhook(t, ctx, cfg, nil)

	t.Run("configuration", func(t *testing.T) {
		mwc, err := c.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, webhook.DefaultConfigurationName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if or := mwc.OwnerReferences; len(or) != 1 || or[0].Kind != "ClusterRole" || or[0].Name != "detour-injector" || or[0].UID == "" {
			t.Errorf("owner references %v: want the ClusterRole detour-injector, so deleting the manifests removes the configuration", or)
		}
		if len(mwc.Webhooks) != 3 {
			t.Fatalf("%d webhooks, want 3", len(mwc.Webhooks))
		}
		for _, w := range mwc.Webhooks {
			if *w.FailurePolicy != admissionregistrationv1.Fail {
				t.Errorf("%s: failurePolicy %s, want Fail", w.Name, *w.FailurePolicy)
			}
			if !strings.Contains(w.NamespaceSelector.String(), "kube-system") || !strings.Contains(w.NamespaceSelector.String(), "detour-system") {
				t.Errorf("%s: namespace selector %s does not skip kube-system and detour-system", w.Name, w.NamespaceSelector)
			}
			if len(w.ClientConfig.CABundle) == 0 {
				t.Errorf("%s: no caBundle", w.Name)
			}
		}
	})

	t.Run("labelled namespace", func(t *testing.T) {
		for _, dry := range []bool{true, false} {
			p, err := c.create(ctx, "meshed", testPod("web-1", nil), dry)
			if err != nil {
				t.Fatalf("dry run %v: %v", dry, err)
			}
			ps := proxies(p)
			if len(ps) != 1 {
				t.Fatalf("dry run %v: %d proxy containers in %v", dry, len(ps), p.Spec)
			}
			// This API server (1.37) supports native sidecars: the proxy is an
			// init container with restartPolicy Always, before the app's.
			if p.Spec.InitContainers[0].Name != inject.ProxyName || ps[0].RestartPolicy == nil || *ps[0].RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("not a native sidecar first: %v", p.Spec.InitContainers)
			}
			if got := *ps[0].SecurityContext.RunAsUser; got != 5678 {
				t.Errorf("proxy uid %d, want the config's 5678", got)
			}
			if p.Annotations["detour.io/redirect"] != "enabled" {
				t.Errorf("annotations %v lack detour.io/redirect: enabled", p.Annotations)
			}
		}
		// The real create was stored as injected.
		got, err := c.cs.CoreV1().Pods("meshed").Get(ctx, "web-1", metav1.GetOptions{})
		if err != nil || len(proxies(got)) != 1 {
			t.Errorf("stored pod: %v, %d proxies", err, len(proxies(got)))
		}
	})

	t.Run("deployment pods", func(t *testing.T) {
		// What the ReplicaSet controller sends: the template, a generated name.
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/web:1"}}},
				},
			},
		}
		if _, err := c.cs.AppsV1().Deployments("meshed").Create(ctx, d, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			p := &corev1.Pod{ObjectMeta: *d.Spec.Template.ObjectMeta.DeepCopy(), Spec: d.Spec.Template.Spec}
			p.GenerateName = "web-5d8f7c-"
			got, err := c.create(ctx, "meshed", p, false)
			if err != nil {
				t.Fatal(err)
			}
			if len(proxies(got)) != 1 {
				t.Errorf("pod %s not injected", got.Name)
			}
		}
	})

	t.Run("left alone", func(t *testing.T) {
		already, err := c.create(ctx, "meshed", testPod("already", nil), true)
		if err != nil {
			t.Fatal(err)
		}
		already.ResourceVersion, already.UID, already.CreationTimestamp = "", "", metav1.Time{}
		host := testPod("host", nil)
		host.Spec.HostNetwork = true
		// detour redirects only Linux network namespaces; an injected Windows
		// pod was refused by the API server (runAsUser cannot be set there).
		windows := testPod("windows", nil)
		windows.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
		for _, tc := range []struct {
			name, ns string
			pod      *corev1.Pod
		}{
			{"unlabelled namespace", "plain", testPod("plain", nil)},
			{"opted out", "meshed", testPod("out", map[string]string{"detour.io/inject": "disabled"})},
			{"host network", "meshed", host},
			{"windows", "meshed", windows},
			{"already injected", "meshed", already},
			{"detour-system", "detour-system", testPod("sys", map[string]string{"detour.io/inject": "enabled"})},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p, err := c.create(ctx, tc.ns, tc.pod, true)
				if err != nil {
					t.Fatal(err)
				}
				want := 0
				if tc.name == "already injected" {
					want = 1
				}
				if n := len(proxies(p)); n != want {
					t.Errorf("%d proxy containers, want %d", n, want)
				}
			})
		}
	})

	// A namespace labelled detour.io/inject=true (Istio's habit) had its
	// pods created without a sidecar, and nothing said so anywhere.
	t.Run("namespace label meaning on in another spelling", func(t *testing.T) {
		for _, ns := range []string{"typo", "typo-yes"} {
			_, err := c.create(ctx, ns, testPod("web-typo", nil), false)
			if err == nil || !strings.Contains(err.Error(), `namespace `+ns+`'s label detour.io/inject means on, but detour injects only with detour.io/inject=enabled`) {
				t.Fatalf("create in namespace %s (labelled to mean on): %v, want a refusal naming the label", ns, err)
			}
		}
		// Opting the pod out is the way to create it anyway.
		if p, err := c.create(ctx, "typo", testPod("web-typo", map[string]string{"detour.io/inject": "disabled"}), false); err != nil || isInjected(p) {
			t.Errorf("create of a pod opted out in that namespace: %v (injected %v), want created as it is", err, err == nil && isInjected(p))
		}
	})

	// A namespace labelled to mean off (false, no, an empty value) had every
	// pod creation refused, its ReplicaSets stopped, and so whenever the
	// control plane was down: its pods are created as they are.
	t.Run("namespace label meaning off", func(t *testing.T) {
		for _, ns := range []string{"off-false", "off-no", "off-empty", "off-disabled"} {
			if p, err := c.create(ctx, ns, testPod("web-off", nil), false); err != nil || isInjected(p) {
				t.Errorf("create in namespace %s: %v (injected %v), want created without a sidecar", ns, err, err == nil && isInjected(p))
			}
		}
	})

	t.Run("pod annotation", func(t *testing.T) {
		p, err := c.create(ctx, "plain", testPod("asked", map[string]string{"detour.io/inject": "enabled"}), true)
		if err != nil {
			t.Fatal(err)
		}
		if len(proxies(p)) != 1 {
			t.Errorf("annotated pod of an unlabelled namespace not injected")
		}
	})

	t.Run("bad annotations refused", func(t *testing.T) {
		for _, tc := range []struct {
			ns   string
			ann  map[string]string
			want []string
		}{
			{"meshed", map[string]string{"detour.io/exclude-outbound-ports": "70000"}, []string{"detour.io/exclude-outbound-ports", "70000"}},
			{"meshed", map[string]string{"sidecar.detour.io/proxy-cpu": "lots"}, []string{"sidecar.detour.io/proxy-cpu", "lots"}},
			{"plain", map[string]string{"detour.io/inject": "yes"}, []string{"detour.io/inject", "yes"}},
		} {
			_, err := c.create(ctx, tc.ns, testPod("bad", tc.ann), true)
			if err == nil {
				t.Errorf("%v accepted", tc.ann)
				continue
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal %q does not name %q", err, w)
				}
			}
		}
	})

	t.Run("app as the proxy uid refused", func(t *testing.T) {
		// The rules never capture the proxy's uid: an app running as it would
		// bypass the mesh unseen, so kubectl shows why the pod is refused.
		p := testPod("as-proxy", nil)
		uid := int64(5678)
		p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &uid}
		_, err := c.create(ctx, "meshed", p, true)
		if err == nil {
			t.Fatal("a pod whose app runs as the proxy uid 5678 was admitted")
		}
		for _, w := range []string{`spec.securityContext.runAsUser: "5678"`, "container app", "proxy.uid"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("refusal %q does not name %q", err, w)
			}
		}
	})

	t.Run("rotation while answering", func(t *testing.T) {
		before := servedSerial(t, c.addr)
		var ok, failed atomic.Int64
		var firstErr atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p, err := c.create(ctx, "meshed", testPod("rot", nil), true)
				if err != nil || !isInjected(p) {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		}()
		for i := 0; i < 2; i++ {
			if err := c.server.Rotate(ctx); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
		}
		close(stop)
		wg.Wait()
		after := servedSerial(t, c.addr)
		if before.SerialNumber.Cmp(after.SerialNumber) == 0 {
			t.Errorf("the served certificate did not change")
		}
		if failed.Load() > 0 || ok.Load() < 10 {
			t.Errorf("during rotation %d admissions failed (first: %v), %d succeeded", failed.Load(), firstErr.Load(), ok.Load())
		}
		mwc, err := c.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, webhook.DefaultConfigurationName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !bundleHas(mwc.Webhooks[0].ClientConfig.CABundle, after) {
			t.Errorf("the caBundle does not hold the issuer of the served certificate")
		}
		t.Logf("%d admissions during two rotations, none failed", ok.Load())
	})
}

func servedSerial(t *testing.T, addr string) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // reading the certificate only
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func bundleHas(bundle []byte, leaf *x509.Certificate) bool {
	pool := x509.NewCertPool()
	for rest := bundle; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			pool.AddCert(c)
		}
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"})
	return err == nil
}
