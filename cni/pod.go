package cni

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/detour-mesh/detour/internal/kubeapi"
	"github.com/detour-mesh/detour/redirect"
)

// KubeClient is what the plugin needs from the Kubernetes API: read one pod and
// one namespace. Errors carrying an API answer satisfy kubeapi.Code.
type KubeClient interface {
	Pod(ctx context.Context, namespace, name string) (*kubeapi.Pod, error)
	Namespace(ctx context.Context, name string) (*kubeapi.Namespace, error)
}

// NewKubeClient builds a client from the kubeconfig file at path. Each request
// is bounded by timeout; the plugin retries on top of that. A token file the
// kubeconfig names is read again on every request.
func NewKubeClient(path string, timeout time.Duration) (KubeClient, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("read kubeconfig: %w", err)
	}
	cfg, err := kubeapi.Load(path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	c, err := kubeapi.New(cfg, kubeapi.Options{Timeout: timeout, UserAgent: "detour-cni"})
	if err != nil {
		return nil, fmt.Errorf("build kubernetes client from %s: %w", path, err)
	}
	return apiClient{c}, nil
}

// apiClient reads pods and namespaces with kubeapi.
type apiClient struct{ c *kubeapi.Client }

func (a apiClient) Pod(ctx context.Context, namespace, name string) (*kubeapi.Pod, error) {
	var p kubeapi.Pod
	if err := a.c.Get(ctx, kubeapi.PodPath(namespace, name), &p); err != nil {
		return nil, err
	}
	return &p, nil
}

func (a apiClient) Namespace(ctx context.Context, name string) (*kubeapi.Namespace, error) {
	var ns kubeapi.Namespace
	if err := a.c.Get(ctx, kubeapi.NamespacePath(name), &ns); err != nil {
		return nil, err
	}
	return &ns, nil
}

// decision is what ADD concluded for one attachment.
type decision struct {
	Redirect bool
	// Reason says why a pod is skipped, or "enabled by pod annotation" /
	// "enabled by namespace label".
	Reason string
	Config redirect.Config // valid when Redirect
}

// retrier runs Kubernetes reads with bounded attempts.
type retrier struct {
	attempts int
	backoff  time.Duration
	log      *slog.Logger
}

// do runs get until it succeeds, fails with a permanent error, or the attempts
// are used up. Transient errors are network failures, timeouts, 429 and 5xx.
func (r retrier) do(ctx context.Context, what string, get func(context.Context) error) error {
	wait := r.backoff
	var err error
	for attempt := 1; attempt <= r.attempts; attempt++ {
		err = get(ctx)
		if err == nil || !transient(err) {
			return err
		}
		if attempt == r.attempts {
			break
		}
		r.log.Warn("kubernetes api request failed, retrying", "object", what, "attempt", attempt, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (then %w)", err, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
	return fmt.Errorf("%w (after %d attempts)", err, r.attempts)
}

// transient reports whether a failed read may succeed when repeated: no
// answer at all (refused, reset, DNS, TLS handshake, timeout), 429 or 5xx.
func transient(err error) bool {
	code := kubeapi.Code(err)
	return code == 0 || code == 429 || code >= 500
}

// decide reads the pod (and, when the pod does not say, its namespace) and
// returns whether and how to redirect. Every failure to know is an error: the
// plugin fails closed rather than start a pod unmeshed by accident.
func decide(ctx context.Context, conf *Conf, ref PodRef, kube func() (KubeClient, error), r retrier, fromAnnotations AnnotationDecoder) (decision, error) {
	if conf.excluded(ref.Namespace) {
		return decision{Reason: "namespace excluded by the plugin config"}, nil
	}
	client, err := kube()
	if err != nil {
		return decision{}, newError(types.ErrTryAgainLater, fmt.Errorf("read pod %s: %w", ref, err))
	}
	var pod *kubeapi.Pod
	err = r.do(ctx, "pod "+ref.String(), func(ctx context.Context) error {
		var err error
		pod, err = client.Pod(ctx, ref.Namespace, ref.Name)
		return err
	})
	if err != nil {
		return decision{}, apiError("read pod "+ref.String(), err)
	}
	if ref.UID != "" && pod.Metadata.UID != ref.UID {
		return decision{}, newError(CodePodNotFound, fmt.Errorf("read pod %s: the api has uid %s, the runtime asked for uid %s", ref, pod.Metadata.UID, ref.UID))
	}
	if pod.Spec.HostNetwork {
		return decision{Reason: "host network pod"}, nil
	}

	on, set, err := optIn(pod.Metadata.Annotations, "pod "+ref.String()+" annotation")
	if err != nil {
		return decision{}, newError(CodeInvalidAnnotation, err)
	}
	reason := "enabled by pod annotation"
	if !set {
		var ns *kubeapi.Namespace
		err := r.do(ctx, "namespace "+ref.Namespace, func(ctx context.Context) error {
			var err error
			ns, err = client.Namespace(ctx, ref.Namespace)
			return err
		})
		if err != nil {
			return decision{}, apiError("read namespace "+ref.Namespace, err)
		}
		on, _, err = optIn(ns.Metadata.Labels, "namespace "+ref.Namespace+" label")
		if err != nil {
			return decision{}, newError(CodeInvalidAnnotation, err)
		}
		reason = "enabled by namespace label"
	}
	if !on {
		return decision{Reason: "not enabled (" + redirect.AnnotationRedirect + " is not " + redirect.RedirectEnabled + ")"}, nil
	}

	base, err := conf.BaseConfig()
	if err != nil {
		return decision{}, newError(types.ErrInvalidNetworkConfig, err)
	}
	cfg, err := fromAnnotations(base, pod.Metadata.Annotations)
	if err != nil {
		return decision{}, newError(CodeInvalidAnnotation, fmt.Errorf("pod %s: %w", ref, err))
	}
	if cfg.DNS.ResolvConf != base.DNS.ResolvConf {
		// The plugin reads that path on the node: a pod must not pick node files.
		return decision{}, newError(CodeInvalidAnnotation, fmt.Errorf("pod %s: %w", ref, &redirect.FieldError{
			Field: "dns.resolvConf", Value: cfg.DNS.ResolvConf,
			Reason: "cannot be set by a pod annotation: it names a file on the node; set it in the plugin config",
		}))
	}
	return decision{Redirect: true, Reason: reason, Config: cfg}, nil
}

// optIn reads redirect.AnnotationRedirect from a pod's annotations or a
// namespace's labels (where names the object). set is false when it is absent.
// A value other than enabled or disabled is an error: a typo must not leave a
// pod silently unmeshed.
func optIn(m map[string]string, where string) (on, set bool, err error) {
	if _, ok := m[redirect.AnnotationRedirect]; !ok {
		return false, false, nil
	}
	on, err = redirect.RedirectRequested(m)
	if err != nil {
		return false, true, fmt.Errorf("%s: %w", where, err)
	}
	return on, true, nil
}

// apiError gives a failed Kubernetes read its CNI code: a missing pod, denied
// credentials, or (anything else, after the retries) "try again later".
func apiError(op string, err error) *types.Error {
	switch kubeapi.Code(err) {
	case 404:
		return newError(CodePodNotFound, fmt.Errorf("%s: %w", op, err))
	case 401, 403:
		return newError(CodeAPIDenied, fmt.Errorf("%s: %w", op, err))
	}
	return newError(types.ErrTryAgainLater, fmt.Errorf("%s: kubernetes api unavailable: %w", op, err))
}
