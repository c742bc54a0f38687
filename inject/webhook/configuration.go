package webhook

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/detour-mesh/detour/inject"
	"github.com/detour-mesh/detour/internal/meshconfig"
)

// Defaults of the MutatingWebhookConfiguration.
const (
	DefaultConfigurationName = "detour-injector"
	DefaultServiceName       = "detour-control-plane"
	DefaultServicePort       = 443
	DefaultTimeoutSeconds    = 10
	// ManagedBy is the app.kubernetes.io/managed-by label of the configuration.
	ManagedBy = "detour-control-plane"
)

// ConfigurationOptions describe the MutatingWebhookConfiguration the server
// owns.
type ConfigurationOptions struct {
	// Name of the configuration; "" = DefaultConfigurationName.
	Name string
	// URL, when set (https://host:port, no path), is where the API server
	// sends requests; otherwise the Service Namespace/Service:Port.
	URL string
	// Namespace, Service and Port name the Service in front of the webhook;
	// "" / 0 = detour-system, detour-control-plane, 443.
	Namespace, Service string
	Port               int32
	// FailurePolicy is Fail (the default: a pod of an opted-in namespace must
	// not start unmeshed because the webhook was down) or Ignore.
	FailurePolicy admissionregistrationv1.FailurePolicyType
	// TimeoutSeconds bounds each call; 0 = DefaultTimeoutSeconds.
	TimeoutSeconds int32
	// OwnerClusterRole, when set, names a ClusterRole that becomes the
	// configuration's owner (an ownerReference), so that deleting detour's
	// manifests (kubectl delete -k) garbage-collects the configuration the
	// control plane created: a configuration left behind with failurePolicy
	// Fail would block pod creation in the labelled namespaces.
	OwnerClusterRole string
}

func (o ConfigurationOptions) withDefaults() ConfigurationOptions {
	if o.Name == "" {
		o.Name = DefaultConfigurationName
	}
	if o.Namespace == "" {
		o.Namespace = meshconfig.Namespace
	}
	if o.Service == "" {
		o.Service = DefaultServiceName
	}
	if o.Port == 0 {
		o.Port = DefaultServicePort
	}
	if o.FailurePolicy == "" {
		o.FailurePolicy = admissionregistrationv1.Fail
	}
	if o.TimeoutSeconds == 0 {
		o.TimeoutSeconds = DefaultTimeoutSeconds
	}
	return o
}

// Validate checks the options.
func (o ConfigurationOptions) Validate() error {
	switch o.FailurePolicy {
	case "", admissionregistrationv1.Fail, admissionregistrationv1.Ignore:
	default:
		return fmt.Errorf("webhook failure policy %q is not Fail or Ignore", o.FailurePolicy)
	}
	if o.TimeoutSeconds < 0 || o.TimeoutSeconds > 30 {
		return fmt.Errorf("webhook timeout %ds is not between 1 and 30 seconds", o.TimeoutSeconds)
	}
	if o.URL != "" {
		// The API server refuses any other URL when the configuration is
		// written, long after start; and the paths are appended to it.
		u, err := url.Parse(o.URL)
		if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.User != nil ||
			strings.TrimSuffix(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(o.URL, "?") || strings.HasSuffix(o.URL, "#") {
			return fmt.Errorf("webhook URL %q is not https://host[:port] (no path, query or user)", o.URL)
		}
	}
	return nil
}

// Configuration returns the MutatingWebhookConfiguration with caBundle. It
// has three webhooks for pods' CREATE, all skipping kube-system and
// detour-system:
//   - namespace.inject.detour.io: namespaces labelled detour.io/inject=enabled
//     (to PathNamespace);
//   - pod.inject.detour.io: pods of other namespaces that carry the
//     detour.io/inject annotation (a match condition; to PathPod);
//   - namespace-label.inject.detour.io: pods without that annotation in
//     namespaces whose detour.io/inject label means on in another spelling,
//     one of inject.NamespaceLabelOnSpellings (to PathNamespaceLabel, which
//     refuses them).
func Configuration(o ConfigurationOptions, caBundle []byte) *admissionregistrationv1.MutatingWebhookConfiguration {
	o = o.withDefaults()
	client := func(path string) admissionregistrationv1.WebhookClientConfig {
		cc := admissionregistrationv1.WebhookClientConfig{CABundle: caBundle}
		if o.URL != "" {
			u := strings.TrimSuffix(o.URL, "/") + path
			cc.URL = &u
		} else {
			cc.Service = &admissionregistrationv1.ServiceReference{Namespace: o.Namespace, Name: o.Service, Path: &path, Port: &o.Port}
		}
		return cc
	}
	system := metav1.LabelSelectorRequirement{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system", meshconfig.Namespace}}
	rules := []admissionregistrationv1.RuleWithOperations{{
		Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
		Rule: admissionregistrationv1.Rule{
			APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
			Scope: ptr(admissionregistrationv1.NamespacedScope),
		},
	}}
	hook := func(name, path string, ns metav1.LabelSelectorRequirement) admissionregistrationv1.MutatingWebhook {
		return admissionregistrationv1.MutatingWebhook{
			Name:                    name,
			ClientConfig:            client(path),
			Rules:                   rules,
			FailurePolicy:           ptr(o.FailurePolicy),
			MatchPolicy:             ptr(admissionregistrationv1.Equivalent),
			NamespaceSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{ns, system}},
			ObjectSelector:          &metav1.LabelSelector{},
			SideEffects:             ptr(admissionregistrationv1.SideEffectClassNone),
			TimeoutSeconds:          ptr(o.TimeoutSeconds),
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      ptr(admissionregistrationv1.NeverReinvocationPolicy),
		}
	}
	byNamespace := hook("namespace.inject.detour.io", PathNamespace,
		metav1.LabelSelectorRequirement{Key: inject.AnnotationInject, Operator: metav1.LabelSelectorOpIn, Values: []string{inject.InjectEnabled}})
	byPod := hook("pod.inject.detour.io", PathPod,
		metav1.LabelSelectorRequirement{Key: inject.AnnotationInject, Operator: metav1.LabelSelectorOpNotIn, Values: []string{inject.InjectEnabled}})
	byPod.MatchConditions = []admissionregistrationv1.MatchCondition{{
		Name:       "annotated",
		Expression: fmt.Sprintf("has(object.metadata.annotations) && '%s' in object.metadata.annotations", inject.AnnotationInject),
	}}
	// A namespace labelled detour.io/inject=true (or yes, on: "on" in
	// another spelling) matched neither webhook: its pods started without a
	// sidecar, and nothing said so. Its pods that do not decide for
	// themselves are refused. Only those spellings match: a namespace
	// labelled false, no or "" meant off, and with failurePolicy Fail a
	// wider selector refused its pods, all of them while the control plane
	// was down.
	badLabel := hook("namespace-label.inject.detour.io", PathNamespaceLabel,
		metav1.LabelSelectorRequirement{Key: inject.AnnotationInject, Operator: metav1.LabelSelectorOpIn, Values: slices.Clone(inject.NamespaceLabelOnSpellings)})
	badLabel.MatchConditions = []admissionregistrationv1.MatchCondition{{
		Name:       "not-annotated",
		Expression: fmt.Sprintf("!has(object.metadata.annotations) || !('%s' in object.metadata.annotations)", inject.AnnotationInject),
	}}
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{
			Name:   o.Name,
			Labels: map[string]string{"app.kubernetes.io/managed-by": ManagedBy, "app.kubernetes.io/part-of": "detour"},
		},
		Webhooks: []admissionregistrationv1.MutatingWebhook{byNamespace, byPod, badLabel},
	}
}

// ensureConfiguration creates or updates the configuration so that it is the
// one Configuration describes, with a caBundle of its current, unexpired
// certificates plus own (nil own: the caBundle is left as it is, for a
// bundle that someone else manages, such as cert-manager's CA injector).
func ensureConfiguration(ctx context.Context, client kubernetes.Interface, o ConfigurationOptions, own []byte) error {
	api := client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	name := o.withDefaults().Name
	var owners []metav1.OwnerReference
	if o.OwnerClusterRole != "" {
		cr, err := client.RbacV1().ClusterRoles().Get(ctx, o.OwnerClusterRole, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read clusterrole %s (the configuration's owner): %w", o.OwnerClusterRole, err)
		}
		owners = []metav1.OwnerReference{{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole", Name: cr.Name, UID: cr.UID}}
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := api.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			want := Configuration(o, mergeBundle(nil, own, time.Now()))
			want.OwnerReferences = owners
			_, err = api.Create(ctx, want, metav1.CreateOptions{FieldManager: ManagedBy})
			if err != nil {
				return fmt.Errorf("create mutatingwebhookconfiguration %s: %w", name, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read mutatingwebhookconfiguration %s: %w", name, err)
		}
		var current []byte
		for _, w := range cur.Webhooks {
			current = append(current, w.ClientConfig.CABundle...)
		}
		bundle := current
		if own != nil {
			bundle = mergeBundle(current, own, time.Now())
		} else if len(cur.Webhooks) > 0 {
			bundle = cur.Webhooks[0].ClientConfig.CABundle
		}
		want := Configuration(o, bundle)
		if sameWebhooks(cur, want) && (owners == nil || equality.Semantic.DeepEqual(cur.OwnerReferences, owners)) {
			return nil
		}
		if owners != nil {
			cur.OwnerReferences = owners
		}
		cur.Labels = want.Labels
		cur.Webhooks = want.Webhooks
		if _, err := api.Update(ctx, cur, metav1.UpdateOptions{FieldManager: ManagedBy}); err != nil {
			return fmt.Errorf("update mutatingwebhookconfiguration %s: %w", name, err)
		}
		return nil
	})
}

func sameWebhooks(cur, want *admissionregistrationv1.MutatingWebhookConfiguration) bool {
	if len(cur.Webhooks) != len(want.Webhooks) {
		return false
	}
	for i := range cur.Webhooks {
		a, b := cur.Webhooks[i], want.Webhooks[i]
		if !bytes.Equal(a.ClientConfig.CABundle, b.ClientConfig.CABundle) || a.Name != b.Name {
			return false
		}
		a.ClientConfig.CABundle, b.ClientConfig.CABundle = nil, nil
		if !equality.Semantic.DeepEqual(a, b) {
			return false
		}
	}
	return true
}

func ptr[T any](v T) *T { return &v }
