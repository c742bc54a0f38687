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
	// Source says where the pod's annotations came from: sourceRuntime or
	// sourceAPI ("" when they were not needed).
	Source string
}

// Where a decision's pod annotations came from (the log key annotations_from).
const (
	sourceRuntime = "runtime"
	sourceAPI     = "api"
)

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

// decide reads the pod's annotations (and, when they do not say, its
// namespace's labels) and returns whether and how to redirect. The pod's
// annotations are those the runtime passed in runtimeConfig (the
// io.kubernetes.cri.pod-annotations capability) when it passed any: they are
// the annotations of the very pod whose sandbox this is, so no API read is
// needed. Otherwise the pod is read from the API. Every failure to know is an
// error: the plugin fails closed rather than start a pod unmeshed by accident.
func decide(ctx context.Context, conf *Conf, ref PodRef, kube func() (KubeClient, error), r retrier, fromAnnotations AnnotationDecoder) (decision, error) {
	if conf.excluded(ref.Namespace) {
		return decision{Reason: "namespace excluded by the plugin config"}, nil
	}
	var client KubeClient
	connect := func(op string) error {
		if client != nil {
			return nil
		}
		var err error
		if client, err = kube(); err != nil {
			return newError(types.ErrTryAgainLater, fmt.Errorf("%s: %w", op, err))
		}
		return nil
	}
	// A runtime that declares the capability passes every pod's annotations,
	// and kubelet gives every pod some (kubernetes.io/config.seen, …): an
	// empty map means the runtime passed none, so ask the API.
	annotations, source := conf.RuntimeConfig.PodAnnotations, sourceRuntime
	if len(annotations) == 0 {
		source = sourceAPI
		if err := connect("read pod " + ref.String()); err != nil {
			return decision{}, err
		}
		var pod *kubeapi.Pod
		err := r.do(ctx, "pod "+ref.String(), func(ctx context.Context) error {
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
		// Runtimes do not run CNI for a host-network sandbox; a pod read
		// from the API is checked all the same.
		if pod.Spec.HostNetwork {
			return decision{Reason: "host network pod", Source: source}, nil
		}
		annotations = pod.Metadata.Annotations
	}

	on, set, err := optIn(annotations, "pod "+ref.String()+" annotation")
	if err != nil {
		return decision{}, newError(CodeInvalidAnnotation, err)
	}
	reason := "enabled by pod annotation"
	if !set {
		if err := connect("read namespace " + ref.Namespace); err != nil {
			return decision{}, err
		}
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
		return decision{Reason: "not enabled (" + redirect.AnnotationRedirect + " is not " + redirect.RedirectEnabled + ")", Source: source}, nil
	}

	base, err := conf.baseConfig()
	if err != nil {
		return decision{}, newError(types.ErrInvalidNetworkConfig, err)
	}
	cfg, err := fromAnnotations(base, annotations)
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
	return decision{Redirect: true, Reason: reason, Config: cfg, Source: source}, nil
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
