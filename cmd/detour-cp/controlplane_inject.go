package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/pflag"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"

	"github.com/detour-mesh/detour/controlplane/kube"
	"github.com/detour-mesh/detour/inject/webhook"
	"github.com/detour-mesh/detour/internal/meshconfig"
)

// injectionFlags are the --inject* flags of `detour-cp control-plane`.
type injectionFlags struct {
	enabled       bool
	address       string
	cert, key, ca string
	url           string
	failurePolicy string
	rotateEvery   time.Duration
	owner         string
}

func (f *injectionFlags) bind(fs *pflag.FlagSet) {
	fs.BoolVar(&f.enabled, "inject", false, "--source kubernetes: serve the sidecar injection webhook and own its MutatingWebhookConfiguration (docs/injection.md)")
	fs.StringVar(&f.address, "inject-address", webhook.DefaultAddress, "address of the injection webhook's HTTPS server")
	fs.StringVar(&f.cert, "inject-cert", "", "the webhook's serving certificate (PEM, read again when it changes; e.g. a mounted cert-manager Secret); default: self-generated and rotated")
	fs.StringVar(&f.key, "inject-key", "", "private key of --inject-cert (PEM)")
	fs.StringVar(&f.ca, "inject-ca", "", "with --inject-cert: the CA bundle to write into the configuration's caBundle (default: leave the caBundle to whoever manages it)")
	fs.StringVar(&f.url, "inject-url", "", "register the webhook at this https://host:port instead of the Service detour-control-plane.detour-system:443")
	fs.StringVar(&f.failurePolicy, "inject-failure-policy", string(admissionregistrationv1.Fail), "Fail (pods of opted-in namespaces are not created while the webhook is down) or Ignore (they start unmeshed)")
	fs.DurationVar(&f.rotateEvery, "inject-rotate-every", webhook.DefaultRotateEvery, "how often a self-generated certificate (and its CA) is replaced")
	fs.StringVar(&f.owner, "inject-owner", "detour-injector", `ClusterRole that owns the configuration, so deleting detour's manifests removes it ("" = none)`)
}

// newInjectionServer checks the --inject* flags and builds the webhook.
func newInjectionServer(ctx context.Context, o *controlPlaneOptions, mesh meshconfig.Config, log *slog.Logger) (*webhook.Server, error) {
	f := o.inject
	if (f.cert == "") != (f.key == "") {
		return nil, usageError("--inject-cert and --inject-key go together")
	}
	if f.ca != "" && f.cert == "" {
		return nil, usageError("--inject-ca goes with --inject-cert (a self-generated certificate writes its own CA)")
	}
	if f.rotateEvery < time.Minute {
		return nil, usageError("--inject-rotate-every %s is shorter than a minute", f.rotateEvery)
	}
	if err := (webhook.ConfigurationOptions{URL: f.url}).Validate(); err != nil {
		return nil, usageError("--inject-url: %v", err)
	}
	co := webhook.ConfigurationOptions{
		URL:              f.url,
		FailurePolicy:    admissionregistrationv1.FailurePolicyType(f.failurePolicy),
		OwnerClusterRole: f.owner,
	}
	if err := co.Validate(); err != nil {
		return nil, usageError("--inject-failure-policy: %v", err)
	}
	s, err := webhook.New(ctx, webhook.Options{
		Kubeconfig: o.kubeconfig,
		Mesh:       mesh,
		// The shipped Deployment sets both from the downward API: with
		// injection.detourImage unset, the webhook injects this pod's image.
		PodNamespace:  os.Getenv("POD_NAMESPACE"),
		PodName:       os.Getenv("POD_NAME"),
		Bootstrap:     webhook.Bootstrap,
		Address:       f.address,
		CertFile:      f.cert,
		KeyFile:       f.key,
		CAFile:        f.ca,
		RotateEvery:   f.rotateEvery,
		Configuration: co,
		Log:           log.With("component", "injector"),
	})
	if errors.Is(err, kube.ErrKubeconfig) {
		return nil, withCode(exitUsage, err)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// runAlongside runs fn until the returned context ends; when fn fails first
// it cancels that context (so the control plane stops too). stop cancels and
// returns fn's error.
func runAlongside(ctx context.Context, fn func(context.Context) error) (context.Context, func() error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		err := fn(ctx)
		if err != nil {
			cancel()
		}
		done <- err
	}()
	return ctx, func() error {
		cancel()
		return <-done
	}
}
