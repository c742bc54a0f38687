package install

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/detour-mesh/detour/internal/kubeapi"
)

// fakeAPI answers TokenRequests for one service account and reads of one
// DaemonSet, over TLS, for the installer's token only.
type fakeAPI struct {
	*httptest.Server
	mu       sync.Mutex
	requests []tokenRequest // TokenRequests received
	issued   int
	// dsState is "present", "deleting", "gone" or "broken".
	dsState string
}

func newFakeAPI(t *testing.T, installerToken string) *fakeAPI {
	t.Helper()
	f := &fakeAPI{dsState: "present"}
	f.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+installerToken {
			w.WriteHeader(401)
			fmt.Fprint(w, `{"kind":"Status","reason":"Unauthorized","message":"Unauthorized"}`)
			return
		}
		switch {
		case r.Method == "POST" && r.URL.Path == "/api/v1/namespaces/detour-system/serviceaccounts/detour-cni-plugin/token":
			var req tokenRequest
			b, _ := io.ReadAll(r.Body)
			if err := json.Unmarshal(b, &req); err != nil {
				w.WriteHeader(400)
				return
			}
			f.requests = append(f.requests, req)
			f.issued++
			node := ""
			if req.Spec.BoundObjectRef != nil {
				node = req.Spec.BoundObjectRef.Name
			}
			now := time.Now().Unix()
			req.Status.Token = pluginJWT("system:serviceaccount:detour-system:detour-cni-plugin", node, now, now+req.Spec.ExpirationSeconds, f.issued)
			json.NewEncoder(w).Encode(req)
		case r.Method == "GET" && r.URL.Path == "/apis/apps/v1/namespaces/detour-system/daemonsets/detour-cni-node":
			switch f.dsState {
			case "present":
				fmt.Fprint(w, `{"kind":"DaemonSet","metadata":{"name":"detour-cni-node"}}`)
			case "deleting":
				fmt.Fprint(w, `{"kind":"DaemonSet","metadata":{"name":"detour-cni-node","deletionTimestamp":"2030-01-01T00:00:00Z"}}`)
			case "gone":
				w.WriteHeader(404)
				fmt.Fprint(w, `{"kind":"Status","reason":"NotFound","message":"daemonsets.apps \"detour-cni-node\" not found"}`)
			case "unauthorized": // the installer's service account is deleted
				w.WriteHeader(401)
				fmt.Fprint(w, `{"kind":"Status","reason":"Unauthorized","message":"Unauthorized"}`)
			case "forbidden": // its Role or RoleBinding is deleted
				w.WriteHeader(403)
				fmt.Fprint(w, `{"kind":"Status","reason":"Forbidden","message":"daemonsets.apps \"detour-cni-node\" is forbidden"}`)
			default:
				w.WriteHeader(503)
			}
		default:
			w.WriteHeader(404)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeAPI) tokenRequests() []tokenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]tokenRequest(nil), f.requests...)
}

// pluginJWT is an unsigned token with the claims a node-bound service account
// token carries.
func pluginJWT(sub, node string, iat, exp int64, serial int) string {
	enc := base64.RawURLEncoding
	claims := fmt.Sprintf(`{"sub":%q,"iat":%d,"exp":%d,"kubernetes.io":{"node":{"name":%q}},"serial":%d}`, sub, iat, exp, node, serial)
	return enc.EncodeToString([]byte(`{"alg":"RS256"}`)) + "." + enc.EncodeToString([]byte(claims)) + ".c2ln"
}

// apiNode is a fake node whose installer talks to f.
func apiNode(t *testing.T) (node, *fakeAPI, Options) {
	t.Helper()
	n := newNode(t)
	installerToken := strings.TrimSpace(string(readFile(t, n.token)))
	f := newFakeAPI(t, installerToken)
	writeFile(t, n.ca, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.Certificate().Raw})))
	o := n.options()
	o.Server = f.URL
	o.PluginServiceAccount = "detour-system/detour-cni-plugin"
	o.NodeName = "node-a"
	return n, f, o
}

func TestPluginToken(t *testing.T) {
	t.Parallel()
	n, f, o := apiNode(t)
	n.primary(t, "10-flannel.conflist")
	in := New(o)
	tokenFile := filepath.Join(n.conf, DefaultTokenName)
	changes, err := in.Install(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(changes, "\n"), "wrote "+tokenFile) {
		t.Errorf("changes %q do not name the token file", changes)
	}
	reqs := f.tokenRequests()
	if len(reqs) != 1 || reqs[0].Spec.BoundObjectRef == nil || reqs[0].Spec.BoundObjectRef.Kind != "Node" || reqs[0].Spec.BoundObjectRef.Name != "node-a" ||
		reqs[0].Spec.ExpirationSeconds != int64(DefaultPluginTokenLifetime/time.Second) {
		t.Fatalf("token requests %+v, want one bound to node node-a for %s", reqs, DefaultPluginTokenLifetime)
	}
	if fi, err := os.Stat(tokenFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file: %v, %v; want mode 0600", fi, err)
	}
	// The kubeconfig names the token file; the plugin's reader loads it so.
	cfg, err := kubeapi.Load(filepath.Join(n.conf, DefaultKubeconfigName))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TokenFile != tokenFile || cfg.Token != "" {
		t.Errorf("kubeconfig token %q, token file %q; want only the token file %s", cfg.Token, cfg.TokenFile, tokenFile)
	}
	first := readFile(t, tokenFile)

	// A fresh token is kept: no request, no write.
	if changes, err := in.Install(context.Background()); err != nil || len(changes) != 0 {
		t.Errorf("second install: %q, %v; want no change", changes, err)
	}
	if len(f.tokenRequests()) != 1 {
		t.Errorf("%d token requests after a no-change install, want 1", len(f.tokenRequests()))
	}

	// A token past half its life (or of another node) is renewed.
	now := time.Now().Unix()
	writeFile(t, tokenFile, pluginJWT("system:serviceaccount:detour-system:detour-cni-plugin", "node-a", now-3600, now+600, 99))
	if _, err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	writeFile(t, tokenFile, string(first))
	o2 := o
	o2.NodeName = "node-b"
	if _, err := New(o2).Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(f.tokenRequests()); got != 3 {
		t.Errorf("%d token requests, want 3 (first, due, other node)", got)
	}

	if _, err := in.Uninstall(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tokenFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("token file left after uninstall: %v", err)
	}
}

func TestPluginTokenRequestRefused(t *testing.T) {
	t.Parallel()
	n, _, o := apiNode(t)
	n.primary(t, "10-flannel.conflist")
	writeFile(t, n.token, "not-the-installer-token")
	_, err := New(o).Install(context.Background())
	if err == nil || !strings.Contains(err.Error(), "request a token for service account detour-system/detour-cni-plugin: Unauthorized") {
		t.Fatalf("Install = %v, want the refused token request", err)
	}
	if hasEntry(filepath.Join(n.conf, "10-flannel.conflist")) {
		t.Error("entry inserted without a plugin token")
	}
}

// TestRunCleanupOnlyWhenTheDaemonSetIsGone: on SIGTERM the installation stays
// for the next pod while the DaemonSet exists (or the API cannot tell), and is
// removed when the DaemonSet is deleted or being deleted, or the installer's
// identity is refused (detour's service accounts or RBAC deleted).
func TestRunCleanupOnlyWhenTheDaemonSetIsGone(t *testing.T) {
	t.Parallel()
	tests := []struct {
		state   string
		removed bool
	}{
		{"present", false},
		{"broken", false},
		{"deleting", true},
		{"gone", true},
		// kubectl delete -k deletes the service accounts and RBAC before the
		// DaemonSet's pods stop: a plugin left behind would hold a token of a
		// deleted service account and fail every new pod's ADD.
		{"unauthorized", true},
		{"forbidden", true},
	}
	for _, tt := range tests {
		t.Run(tt.state, func(t *testing.T) {
			t.Parallel()
			n, f, o := apiNode(t)
			primary := n.primary(t, "10-flannel.conflist")
			o.CleanupOnExit = true
			o.DaemonSet = "detour-system/detour-cni-node"
			f.mu.Lock()
			f.dsState = tt.state
			f.mu.Unlock()
			stop := runInstaller(t, o)
			eventually(t, "entry inserted", func() bool { return hasEntry(primary) })
			if err := stop(); err != nil {
				t.Fatalf("Run returned %v", err)
			}
			for _, p := range []string{filepath.Join(n.bin, PluginType), filepath.Join(n.conf, DefaultKubeconfigName), filepath.Join(n.conf, DefaultTokenName)} {
				_, err := os.Stat(p)
				if gone := errors.Is(err, os.ErrNotExist); gone != tt.removed {
					t.Errorf("%s removed = %v, want %v", p, gone, tt.removed)
				}
			}
			if hasEntry(primary) == tt.removed {
				t.Errorf("entry present = %v, want %v", hasEntry(primary), !tt.removed)
			}
		})
	}
}
