package webhook_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/detour-mesh/detour/inject"
	"github.com/detour-mesh/detour/inject/webhook"
)

func TestHandler(t *testing.T) {
	t.Parallel()
	in, err := inject.New(inject.Options{Bootstrap: webhook.Bootstrap})
	if err != nil {
		t.Fatal(err)
	}
	h := &webhook.Handler{Injector: in}
	pod := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"app","image":"x"}]}}`)
	review := func(path string, req admissionv1.AdmissionRequest) (*httptest.ResponseRecorder, *admissionv1.AdmissionResponse) {
		req.UID = "uid-1"
		b, _ := json.Marshal(admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: &req})
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(b)))
		var out admissionv1.AdmissionReview
		if rec.Code == http.StatusOK {
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
				t.Fatal(err)
			}
		}
		return rec, out.Response
	}
	podReq := func(op admissionv1.Operation, raw []byte) admissionv1.AdmissionRequest {
		return admissionv1.AdmissionRequest{
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Operation: op,
			Namespace: "shop", Object: runtime.RawExtension{Raw: raw},
		}
	}

	_, resp := review(webhook.PathNamespace, podReq(admissionv1.Create, pod))
	if resp == nil || !resp.Allowed || resp.UID != "uid-1" || !strings.Contains(string(resp.Patch), inject.ProxyName) {
		t.Errorf("create in an opted-in namespace: %+v, want allowed with a patch adding %s", resp, inject.ProxyName)
	}
	_, resp = review(webhook.PathPod, podReq(admissionv1.Create, pod))
	if resp == nil || !resp.Allowed || resp.Patch != nil {
		t.Errorf("create of an unannotated pod on the pod path: %+v, want allowed untouched", resp)
	}
	_, resp = review(webhook.PathNamespace, podReq(admissionv1.Update, pod))
	if resp == nil || !resp.Allowed || resp.Patch != nil {
		t.Errorf("update: %+v, want allowed untouched", resp)
	}
	svc := podReq(admissionv1.Create, []byte(`{}`))
	svc.Resource.Resource = "services"
	if _, resp = review(webhook.PathNamespace, svc); resp == nil || !resp.Allowed || resp.Patch != nil {
		t.Errorf("a service: %+v, want allowed untouched", resp)
	}
	if _, resp = review(webhook.PathNamespace, podReq(admissionv1.Create, []byte(`{"spec":{"containers":"x"}}`))); resp == nil || resp.Allowed {
		t.Errorf("an undecodable pod: %+v, want refused", resp)
	}
	// A pod that asks for the sidecar itself but cannot have one is admitted
	// untouched with a warning (kubectl prints it), not silently.
	hostPod := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"detour.io/inject":"enabled"}},"spec":{"hostNetwork":true,"containers":[{"name":"app","image":"x"}]}}`)
	_, resp = review(webhook.PathPod, podReq(admissionv1.Create, hostPod))
	if resp == nil || !resp.Allowed || resp.Patch != nil || len(resp.Warnings) != 1 ||
		!strings.Contains(resp.Warnings[0], "detour sidecar not injected: host network pod") {
		t.Errorf("host-network pod annotated for injection: %+v, want allowed untouched with a warning", resp)
	}
	sysReq := podReq(admissionv1.Create, bytes.Replace(hostPod, []byte(`"hostNetwork":true,`), nil, 1))
	sysReq.Namespace = "kube-system"
	if _, resp = review(webhook.PathPod, sysReq); resp == nil || !resp.Allowed || resp.Patch != nil || len(resp.Warnings) != 1 ||
		!strings.Contains(resp.Warnings[0], "system namespace kube-system") {
		t.Errorf("kube-system pod annotated for injection: %+v, want allowed untouched with a warning", resp)
	}
	injectedPod := bytes.Replace(hostPod, []byte(`"detour.io/inject":"enabled"`), []byte(`"detour.io/inject":"enabled","sidecar.detour.io/status":"{}"`), 1)
	if _, resp = review(webhook.PathPod, podReq(admissionv1.Create, injectedPod)); resp == nil || !resp.Allowed || resp.Patch != nil || len(resp.Warnings) != 0 {
		t.Errorf("already injected pod: %+v, want allowed untouched without a warning", resp)
	}
	// Left out by the namespace's label only: nothing to warn about (a
	// DaemonSet on the host network is ordinary).
	nsHostPod := bytes.Replace(hostPod, []byte(`"annotations":{"detour.io/inject":"enabled"}`), []byte(`"annotations":{}`), 1)
	if _, resp = review(webhook.PathNamespace, podReq(admissionv1.Create, nsHostPod)); resp == nil || !resp.Allowed || resp.Patch != nil || len(resp.Warnings) != 0 {
		t.Errorf("host-network pod of an opted-in namespace: %+v, want allowed untouched without a warning", resp)
	}
	if rec, _ := review("/other", podReq(admissionv1.Create, pod)); rec.Code != http.StatusNotFound {
		t.Errorf("unknown path: %d, want 404", rec.Code)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, webhook.PathNamespace, strings.NewReader("not json")))
	if rec.Code != http.StatusBadRequest {
		t.Errorf("a body that is not a review: %d, want 400", rec.Code)
	}
}

// TestConfigurationURL: a URL the API server would refuse when the
// configuration is written (long after start) is refused by Validate, naming it.
func TestConfigurationURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, url string
		ok        bool
	}{
		{"host and port", "https://192.0.2.1:15017", true},
		{"trailing slash", "https://cp.example:15017/", true},
		{"no port", "https://cp.example", true},
		{"http", "http://192.0.2.1:15017", false},
		{"no host", "https://", false},
		{"no scheme", "192.0.2.1:15017", false},
		{"a path", "https://192.0.2.1:15017/inject", false},
		{"a query", "https://192.0.2.1:15017?x=1", false},
		{"a user", "https://u:p@192.0.2.1:15017", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := webhook.ConfigurationOptions{URL: tt.url}.Validate()
			if tt.ok != (err == nil) {
				t.Fatalf("Validate(URL %q) = %v, want ok %v", tt.url, err, tt.ok)
			}
			if err != nil && !strings.Contains(err.Error(), `"`+tt.url+`"`) {
				t.Errorf("error %q does not name the URL", err)
			}
		})
	}
}

// TestNamespaceLabelWebhookMatches: the webhook that refuses pods of a
// namespace whose detour.io/inject label means on in another spelling (true,
// yes) must not match a namespace labelled to mean off (false, no, ""): with
// failurePolicy Fail, every pod of such a namespace was refused, and all of
// them whenever the control plane was down.
func TestNamespaceLabelWebhookMatches(t *testing.T) {
	t.Parallel()
	mwc := webhook.Configuration(webhook.ConfigurationOptions{URL: "https://192.0.2.1:15017"}, nil)
	matches := func(value string) []string {
		ns := labels.Set{"kubernetes.io/metadata.name": "shop", "detour.io/inject": value}
		var out []string
		for _, w := range mwc.Webhooks {
			sel, err := metav1.LabelSelectorAsSelector(w.NamespaceSelector)
			if err != nil {
				t.Fatalf("webhook %s: namespace selector: %v", w.Name, err)
			}
			if sel.Matches(ns) {
				out = append(out, w.Name)
			}
		}
		return out
	}
	for _, v := range []string{"", "false", "False", "FALSE", "no", "No", "NO", "n", "off", "Off", "0", "disable", "Disabled", "disabled", "maybe"} {
		if got := matches(v); slices.Contains(got, "namespace-label.inject.detour.io") || slices.Contains(got, "namespace.inject.detour.io") {
			t.Errorf("namespace labelled detour.io/inject=%q matches %v, want neither namespace webhook (its pods are created as they are)", v, got)
		}
	}
	for _, v := range []string{"true", "True", "TRUE", "yes", "Yes", "y", "on", "On", "1", "enable", "Enabled", "ENABLED"} {
		if got := matches(v); !slices.Contains(got, "namespace-label.inject.detour.io") {
			t.Errorf("namespace labelled detour.io/inject=%q matches %v, want namespace-label.inject.detour.io (it means on; its pods would start without a sidecar unseen)", v, got)
		}
	}
	if got := matches("enabled"); !slices.Equal(got, []string{"namespace.inject.detour.io"}) {
		t.Errorf("namespace labelled detour.io/inject=enabled matches %v, want namespace.inject.detour.io", got)
	}
}
