package kubeapi

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/internal/testpki"
)

// apiServer is an httptest TLS server that answers pod and namespace GETs for
// the one bearer token it currently accepts.
type apiServer struct {
	*httptest.Server
	mu    sync.Mutex
	token string
	seen  []string // "METHOD path" of each request
}

func newAPIServer(t *testing.T, token string) *apiServer {
	t.Helper()
	a := &apiServer{token: token}
	a.Server = httptest.NewTLSServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.Close)
	return a
}

func (a *apiServer) setToken(tok string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.token = tok
}

func (a *apiServer) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.seen = append(a.seen, r.Method+" "+r.URL.EscapedPath())
	ok := r.Header.Get("Authorization") == "Bearer "+a.token
	a.mu.Unlock()
	status := func(code int, reason, msg string) {
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":%q,"message":%q,"code":%d}`, reason, msg, code)
	}
	switch {
	case !ok:
		status(401, "Unauthorized", "Unauthorized")
	case r.URL.Path == "/api/v1/namespaces/shop/pods/web":
		fmt.Fprint(w, `{"kind":"Pod","metadata":{"name":"web","namespace":"shop","uid":"u-1","annotations":{"detour.io/redirect":"enabled"},"managedFields":[{"manager":"x"}]},"spec":{"hostNetwork":true,"containers":[{"name":"app"}]},"status":{"phase":"Running"}}`)
	case r.URL.Path == "/api/v1/namespaces/shop":
		fmt.Fprint(w, `{"kind":"Namespace","metadata":{"name":"shop","labels":{"team":"a"}}}`)
	case r.URL.Path == "/api/v1/namespaces/busy":
		status(429, "TooManyRequests", "slow down")
	case r.URL.Path == "/api/v1/namespaces/broken":
		w.WriteHeader(502)
		fmt.Fprint(w, "<html>bad gateway</html>")
	default:
		status(404, "NotFound", fmt.Sprintf("pods %q not found", filepath.Base(r.URL.Path)))
	}
}

func (a *apiServer) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Certificate().Raw})
}

func writeFile(t *testing.T, path, body string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// kubeconfigFor writes a kubeconfig for a with the given user stanza.
func kubeconfigFor(t *testing.T, a *apiServer, user string) string {
	t.Helper()
	dir := t.TempDir()
	return writeFile(t, filepath.Join(dir, "kubeconfig"), fmt.Sprintf(`apiVersion: v1
kind: Config
current-context: node
clusters:
- name: other
  cluster: {server: "https://192.0.2.1:6443"}
- name: c
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: u
  user: %s
contexts:
- name: elsewhere
  context: {cluster: other, user: u}
- name: node
  context: {cluster: c, user: u}
`, a.URL, base64.StdEncoding.EncodeToString(a.caPEM()), user))
}

func client(t *testing.T, path string) *Client {
	t.Helper()
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGetDecodesPodAndNamespace(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, "tok-1")
	c := client(t, kubeconfigFor(t, a, "{token: tok-1}"))
	var p Pod
	if err := c.Get(context.Background(), PodPath("shop", "web"), &p); err != nil {
		t.Fatal(err)
	}
	want := Pod{Metadata: ObjectMeta{Name: "web", Namespace: "shop", UID: "u-1", Annotations: map[string]string{"detour.io/redirect": "enabled"}}}
	want.Spec.HostNetwork = true
	if d := cmp.Diff(want, p); d != "" {
		t.Errorf("pod (-want +got):\n%s", d)
	}
	var ns Namespace
	if err := c.Get(context.Background(), NamespacePath("shop"), &ns); err != nil {
		t.Fatal(err)
	}
	if ns.Metadata.Labels["team"] != "a" {
		t.Errorf("namespace labels = %v", ns.Metadata.Labels)
	}
}

func TestGetErrorsCarryTheAnswer(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, "tok-1")
	c := client(t, kubeconfigFor(t, a, "{token: tok-1}"))
	tests := []struct {
		name     string
		path     string
		wantCode int
		wantMsg  string
	}{
		{"not found", PodPath("shop", "ghost"), 404, `pods "ghost" not found`},
		{"too many requests", NamespacePath("busy"), 429, "slow down"},
		{"not a status body", NamespacePath("broken"), 502, "the server answered 502 Bad Gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.Get(context.Background(), tt.path, &Pod{})
			if Code(err) != tt.wantCode || err == nil || err.Error() != tt.wantMsg {
				t.Errorf("err = %v (code %d), want %q (code %d)", err, Code(err), tt.wantMsg, tt.wantCode)
			}
		})
	}
	// No answer at all is code 0: the caller may retry.
	a.Close()
	if err := c.Get(context.Background(), PodPath("shop", "web"), &Pod{}); err == nil || Code(err) != 0 {
		t.Errorf("closed server: err = %v (code %d), want a transport error (code 0)", err, Code(err))
	}
}

// TestTokenFileIsReadOnEveryRequest: a token file rewritten on disk is used
// by the next request of the same client, so a new token takes over without
// a reload (the installer's hand-over).
func TestTokenFileIsReadOnEveryRequest(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, "old")
	dir := t.TempDir()
	tokenFile := writeFile(t, filepath.Join(dir, "token"), "old\n")
	c := client(t, kubeconfigFor(t, a, fmt.Sprintf("{tokenFile: %s}", tokenFile)))
	get := func() error { return c.Get(context.Background(), PodPath("shop", "web"), &Pod{}) }
	if err := get(); err != nil {
		t.Fatalf("with the old token: %v", err)
	}
	a.setToken("new")
	if err := get(); Code(err) != 401 {
		t.Fatalf("old token after the server moved on: err = %v, want 401", err)
	}
	writeFile(t, tokenFile, "new")
	if err := get(); err != nil {
		t.Fatalf("after the token file was rewritten: %v", err)
	}
}

func TestLoadRefusesUnusableKubeconfigs(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, "t")
	dir := t.TempDir()
	tests := []struct {
		name, body, want string
	}{
		{"no such context", "current-context: x\ncontexts: []\n", `current-context "x": no such context`},
		{"ambiguous context", "contexts: [{name: a}, {name: b}]\n", "current-context is empty and there are 2 contexts"},
		{"missing cluster", "current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\n", `context "a": no cluster "c"`},
		{"bad server", "current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\nclusters: [{name: c, cluster: {server: \"192.0.2.1:6443\"}}]\n", `server "192.0.2.1:6443" is not an https://`},
		{"bad ca data", "current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\nclusters: [{name: c, cluster: {server: \"" + a.URL + "\", certificate-authority-data: \"!!\"}}]\n", "certificate-authority-data is not base64"},
		{"not yaml", "clusters: [", "kubeconfig"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")), tt.body)
			_, err := Load(path)
			if !errors.Is(err, ErrKubeconfig) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("Load = %v, want ErrKubeconfig naming %s and %q", err, path, tt.want)
			}
		})
	}
	if _, err := Load(filepath.Join(dir, "missing")); !errors.Is(err, ErrKubeconfig) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrKubeconfig wrapping ErrNotExist", err)
	}
}

// TestServerIsVerified: a server whose certificate the kubeconfig's CA did not
// sign gets no request.
func TestServerIsVerified(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, "t")
	cfg, err := Load(kubeconfigFor(t, a, "{token: t}"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.CA = otherCA(t)
	c, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Get(context.Background(), PodPath("shop", "web"), &Pod{})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("err = %v, want a certificate verification error", err)
	}
	if len(a.seen) != 0 {
		t.Errorf("the server saw %v", a.seen)
	}
}

// otherCA is a self-signed CA certificate that signed nothing the test serves
// (every httptest server shares one certificate).
func otherCA(t *testing.T) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: testpki.New(t, "other CA").DER})
}
