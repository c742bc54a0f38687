package webhook

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detour-mesh/detour/inject"
)

// Paths the handler serves. The configuration sends pods of namespaces
// labelled detour.io/inject=enabled to PathNamespace, pods of other
// namespaces that carry the detour.io/inject annotation to PathPod, and pods
// without it in namespaces whose label means on in another spelling (true,
// yes) to PathNamespaceLabel, which refuses them.
const (
	PathNamespace      = "/inject/namespace"
	PathPod            = "/inject/pod"
	PathNamespaceLabel = "/inject/namespace-label"
)

// maxReview bounds a request body: a pod is far smaller.
const maxReview = 8 << 20

// Handler answers AdmissionReview (admission.k8s.io/v1) requests for pods.
type Handler struct {
	Injector *inject.Injector
	// Log receives one line per decision at debug level, refusals at info; nil
	// discards.
	Log *slog.Logger
	// Observe, when set, is called with the time each review took (decode,
	// decide, mutate, encode), for metrics and benchmarks.
	Observe func(time.Duration)
}

func (h *Handler) log() *slog.Logger {
	if h.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Log
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var optedIn, badLabel bool
	switch r.URL.Path {
	case PathNamespace:
		optedIn = true
	case PathPod:
	case PathNamespaceLabel:
		badLabel = true
	default:
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	start := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReview))
	if err != nil {
		http.Error(w, "read request: "+err.Error(), http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, "not an AdmissionReview with a request", http.StatusBadRequest)
		return
	}
	var resp *admissionv1.AdmissionResponse
	if badLabel {
		resp = h.reviewBadLabel(review.Request)
	} else {
		resp = h.Review(review.Request, optedIn)
	}
	resp.UID = review.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp})
	if err != nil {
		http.Error(w, "render response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
	if h.Observe != nil {
		h.Observe(time.Since(start))
	}
	h.log().Debug("admission", "namespace", review.Request.Namespace, "pod", review.Request.Name,
		"allowed", resp.Allowed, "patched", resp.Patch != nil, "duration", time.Since(start))
}

// Review decides one request: pods' CREATE only, everything else is allowed
// untouched. optedIn says the pod's namespace is labelled for injection.
func (h *Handler) Review(req *admissionv1.AdmissionRequest, optedIn bool) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Resource.Resource != "pods" || req.Resource.Group != "" || req.SubResource != "" || req.Operation != admissionv1.Create {
		return allow
	}
	var obj map[string]any
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &obj); err != nil {
		return deny(http.StatusBadRequest, fmt.Errorf("decode pod: %w", err))
	}
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(http.StatusBadRequest, fmt.Errorf("decode pod: %w", err))
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "*"
	}
	want, reason, err := inject.Wanted(req.Namespace, pod.ObjectMeta, pod.Spec, optedIn)
	if err != nil {
		h.log().Info("sidecar injection refused", "namespace", req.Namespace, "pod", name, "error", err)
		return deny(http.StatusBadRequest, err)
	}
	if !want {
		h.log().Debug("pod not injected", "namespace", req.Namespace, "pod", name, "reason", reason)
		_, injected := pod.Annotations[inject.AnnotationStatus]
		if v := pod.Annotations[inject.AnnotationInject]; strings.TrimSpace(v) == inject.InjectEnabled && !injected {
			// The pod asked for the sidecar itself: say why it has none
			// (kubectl prints admission warnings). An injected pod
			// created again keeps its annotation: nothing to say.
			allow.Warnings = []string{fmt.Sprintf("detour sidecar not injected: %s (the pod's %s: %s has no effect)", reason, inject.AnnotationInject, inject.InjectEnabled)}
		}
		return allow
	}
	m, err := h.Injector.Plan(pod.ObjectMeta, pod.Spec)
	if err != nil {
		h.log().Info("sidecar injection refused", "namespace", req.Namespace, "pod", name, "error", err)
		return deny(http.StatusBadRequest, err)
	}
	if err := m.Apply(obj); err != nil {
		return deny(http.StatusBadRequest, err)
	}
	// "add" replaces an existing member (RFC 6902): each changed part is
	// written whole, which keeps the patch correct whatever the pod held.
	meta := obj["metadata"].(map[string]any)
	spec := obj["spec"].(map[string]any)
	ops := []patchOp{{Op: "add", Path: "/metadata/annotations", Value: meta["annotations"]}}
	for _, k := range []string{"initContainers", "containers", "volumes"} {
		if v, ok := spec[k]; ok {
			ops = append(ops, patchOp{Op: "add", Path: "/spec/" + k, Value: v})
		}
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return deny(http.StatusInternalServerError, fmt.Errorf("render patch: %w", err))
	}
	pt := admissionv1.PatchTypeJSONPatch
	h.log().Debug("pod injected", "namespace", req.Namespace, "pod", name, "reason", reason, "sidecar", m.Status.Sidecar)
	return &admissionv1.AdmissionResponse{Allowed: true, Patch: patch, PatchType: &pt}
}

type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// reviewBadLabel refuses a pod's CREATE in a namespace whose detour.io/inject
// label means on in another spelling than enabled (detour.io/inject=true,
// Istio's habit; inject.NamespaceLabelOnSpellings), when the pod does not
// decide for itself: the label would otherwise
// be ignored without a word and the pod start without its sidecar.
func (h *Handler) reviewBadLabel(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	if req.Resource.Resource != "pods" || req.Resource.Group != "" || req.SubResource != "" || req.Operation != admissionv1.Create {
		return &admissionv1.AdmissionResponse{Allowed: true}
	}
	err := fmt.Errorf("namespace %s's label %s means on, but detour injects only with %s=%s (the label is one of %s): label the namespace %s=%s to inject its pods (or %s), or annotate the pod %s: %s",
		req.Namespace, inject.AnnotationInject, inject.AnnotationInject, inject.InjectEnabled, strings.Join(inject.NamespaceLabelOnSpellings, ", "),
		inject.AnnotationInject, inject.InjectEnabled, inject.InjectDisabled, inject.AnnotationInject, inject.InjectDisabled)
	h.log().Info("sidecar injection refused", "namespace", req.Namespace, "pod", req.Name, "error", err)
	return deny(http.StatusBadRequest, err)
}

func deny(code int32, err error) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: code, Reason: metav1.StatusReasonBadRequest,
		Message: "detour sidecar injection: " + err.Error(),
	}}
}
