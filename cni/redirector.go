package cni

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/backends"
)

// ErrDrift means the rules installed in a pod's namespace differ from what ADD
// installed (CHECK fails with it).
var ErrDrift = errors.New("installed redirection differs from the plan")

// Redirector changes the redirection inside one network namespace. The plugin
// uses the redirect engine; tests use a fake.
type Redirector interface {
	// Install makes the namespace hold exactly the plan for cfg (idempotent).
	Install(ctx context.Context, cfg redirect.Config) error
	// Check returns an error wrapping ErrDrift when the namespace does not hold
	// exactly the plan for cfg.
	Check(ctx context.Context, cfg redirect.Config) error
	// Uninstall removes everything detour owns in the namespace (idempotent).
	Uninstall(ctx context.Context) error
}

// AnnotationDecoder turns a pod's annotations into its redirect.Config, starting
// from base (redirect.FromAnnotations).
type AnnotationDecoder func(base redirect.Config, annotations map[string]string) (redirect.Config, error)

// EngineRedirector returns the Redirector that applies plans with the redirect
// engine inside the network namespace at netns.
func EngineRedirector(netns string, logger *slog.Logger) Redirector {
	return engineRedirector{e: backends.Engine(netns, backends.Options{Logger: logger})}
}

type engineRedirector struct{ e *redirect.Engine }

func (r engineRedirector) plan(ctx context.Context, cfg redirect.Config) (redirect.Plan, error) {
	facts, err := r.e.Facts(ctx, cfg)
	if err != nil {
		return redirect.Plan{}, fmt.Errorf("observe pod namespace: %w", err)
	}
	p, err := redirect.NewPlan(cfg, facts)
	if err != nil {
		return redirect.Plan{}, fmt.Errorf("plan redirection: %w", err)
	}
	return p, nil
}

func (r engineRedirector) Install(ctx context.Context, cfg redirect.Config) error {
	p, err := r.plan(ctx, cfg)
	if err != nil {
		return err
	}
	if _, err := r.e.Install(ctx, p); err != nil {
		return fmt.Errorf("install redirection: %w", err)
	}
	return nil
}

func (r engineRedirector) Check(ctx context.Context, cfg redirect.Config) error {
	p, err := r.plan(ctx, cfg)
	if err != nil {
		return err
	}
	d, err := r.e.Check(ctx, p)
	if errors.Is(err, redirect.ErrNotInstalled) {
		return fmt.Errorf("%w: nothing is installed", ErrDrift)
	}
	if err != nil {
		return fmt.Errorf("check redirection: %w", err)
	}
	if !d.Empty() {
		return fmt.Errorf("%w:\n%s", ErrDrift, d.String())
	}
	return nil
}

func (r engineRedirector) Uninstall(ctx context.Context) error {
	if _, err := r.e.Uninstall(ctx); err != nil {
		return fmt.Errorf("uninstall redirection: %w", err)
	}
	return nil
}
