package deploy

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/detour-mesh/detour/internal/privtest"
)

// testControlPlaneAsItsServiceAccount runs detour-cp with the shipped
// Deployment's command line (addresses moved to loopback, the ConfigMap's
// document as the mesh config) as the detour-control-plane service account,
// with a token the API server issued for it: every API call the control plane
// and its injection webhook make at start must be granted by 20-rbac.yaml.
// It is ready (its caches synced) and has written the webhook configuration,
// which calls the shipped Service at the path the webhook serves.
func testControlPlaneAsItsServiceAccount(ctx context.Context, t *testing.T, cfg *rest.Config, cs *kubernetes.Clientset) {
	dir := t.TempDir()
	bin, err := privtest.Build(dir, "github.com/detour-mesh/detour/cmd/detour-cp")
	if err != nil {
		t.Fatal(err)
	}
	dep, err := cs.AppsV1().Deployments("detour-system").Get(ctx, "detour-control-plane", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm, err := cs.CoreV1().ConfigMaps("detour-system").Get(ctx, "detour-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// With validate on, the webhook injects a detour container, whose image
	// (injection.detourImage is unset) it reads from its own pod: a pod of
	// the Deployment's template, which no kubelet runs here.
	doc := cm.Data["config.yaml"]
	if !strings.Contains(doc, "validate: false") {
		t.Fatalf("the mesh config has no \"validate: false\" to turn on:\n%s", doc)
	}
	meshConfig := filepath.Join(dir, "config.yaml")
	writeFile(t, meshConfig, strings.Replace(doc, "validate: false", "validate: true", 1))
	own := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "detour-control-plane-own", Namespace: "detour-system", Labels: map[string]string{"test": "own-image"}},
		Spec: dep.Spec.Template.Spec}
	if _, err := cs.CoreV1().Pods("detour-system").Create(ctx, own, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cs.CoreV1().Pods("detour-system").Delete(context.Background(), own.Name, metav1.DeleteOptions{})
	}()
	exp := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts("detour-system").CreateToken(ctx, "detour-control-plane", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	writeFile(t, kubeconfig, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority-data: %s}}]
users: [{name: detour-control-plane, user: {token: %q}}]
contexts: [{name: c, context: {cluster: c, user: detour-control-plane}}]
current-context: c
`, cfg.Host, base64.StdEncoding.EncodeToString(cfg.CAData), tr.Status.Token))

	ctr := dep.Spec.Template.Spec.Containers[0]
	if len(ctr.Command) != 1 || ctr.Command[0] != "/usr/local/bin/detour-cp" {
		t.Fatalf("control plane command %q, want /usr/local/bin/detour-cp", ctr.Command)
	}
	httpAddr := freeAddr(t)
	var args []string
	for _, a := range ctr.Args {
		switch name, _, _ := strings.Cut(a, "="); name {
		case "--xds-address":
			a = "--xds-address=" + freeAddr(t)
		case "--http-address":
			a = "--http-address=" + httpAddr
		case "--inject-address":
			a = "--inject-address=" + freeAddr(t)
		case "--mesh-config":
			a = "--mesh-config=" + meshConfig
		}
		args = append(args, a)
	}
	args = append(args, "--kubeconfig="+kubeconfig)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "POD_NAME="+own.Name, "POD_NAMESPACE="+own.Namespace)
	var logs lockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("detour-cp %s:\n%s", strings.Join(args, " "), logs.String())
		}
	}()

	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("detour-cp exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 60s as the detour-control-plane service account (last: %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for {
		mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "detour-injector", metav1.GetOptions{})
		if err == nil {
			for _, w := range mwc.Webhooks {
				s := w.ClientConfig.Service
				if s == nil || s.Namespace != "detour-system" || s.Name != "detour-control-plane" || s.Port == nil || *s.Port != 443 || s.Path == nil || !strings.HasPrefix(*s.Path, "/inject/") || len(w.ClientConfig.CABundle) == 0 {
					t.Errorf("webhook %s calls %+v (caBundle %d bytes); want the Service detour-system/detour-control-plane:443 at /inject/…", w.Name, s, len(w.ClientConfig.CABundle))
				}
			}
			if len(mwc.Webhooks) == 0 {
				t.Error("the webhook configuration has no webhooks")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no webhook configuration written as the detour-control-plane service account: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Ready means the first lists succeeded and no list or watch is refused
	// (a refused watch keeps /readyz at 503). Give the watches time to
	// start, then look for any other refusal in the log.
	time.Sleep(3 * time.Second)
	want := fmt.Sprintf(`"image":%q`, dep.Spec.Template.Spec.Containers[0].Image)
	var injects bool
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "injected detour containers run the control plane's own image") && strings.Contains(l, want) {
			injects = true
		}
		if strings.Contains(l, "forbidden") || strings.Contains(l, "Unauthorized") {
			t.Errorf("the API refused the control plane something 20-rbac.yaml should grant: %s", l)
		}
	}
	if !injects {
		t.Errorf("the log does not say the injected detour containers run the control plane's own image (%s)", want)
	}
}

// lockedBuffer collects a child's output, written from exec's copying
// goroutines and read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// freeAddr returns a loopback address with a port nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
