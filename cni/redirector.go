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

// RedirectorOptions say where a Redirector works: the pod's network
// namespace, and where the eBPF backend keeps its node-wide state.
type RedirectorOptions struct {
	// Netns is the path of the pod's network namespace (CNI_NETNS).
	Netns string
	// EBPFPinDir and EBPFCgroupRoot are the plugin config's keys of the same
	// names ("" = the eBPF backend's defaults).
	EBPFPinDir, EBPFCgroupRoot string
	Logger                     *slog.Logger
}

// backends are the Options of the Drivers for a call that asks for backend
// (backends.AnyBackend: one that reads or removes every backend's state).
func (o RedirectorOptions) backends(backend redirect.Backend) backends.Options {
	return backends.Options{Logger: o.Logger, Backend: backend, EBPF: backends.EBPFNetns(o.EBPFPinDir, o.EBPFCgroupRoot)}
}

// EngineRedirector returns the Redirector that applies plans with the redirect
// engine inside the network namespace at o.Netns. With backend ebpf the pod's
// namespace is enrolled by its cookie in the maps pinned under EBPFPinDir
// (the programs are loaded and attached to EBPFCgroupRoot by the first pod).
func EngineRedirector(o RedirectorOptions) Redirector {
	return engineRedirector{o: o}
}

// RemoveEBPFEnrolment removes what the eBPF backend holds, outside the pod's
// namespace, for the namespace whose cookie ADD recorded: DEL and GC use it
// when that namespace is already gone. Idempotent.
func RemoveEBPFEnrolment(o RedirectorOptions, cookie uint64) error {
	return backends.RemoveEBPFNetns(o.backends(backends.AnyBackend), cookie)
}

// engineRedirector makes the Engine of each call for the backend the call
// asks for, so that an install with a named backend does not look up which
// iptables the host uses (backends.Options.Backend).
type engineRedirector struct{ o RedirectorOptions }

func (r engineRedirector) engine(backend redirect.Backend) *redirect.Engine {
	return backends.Engine(r.o.Netns, r.o.backends(backend))
}

func (r engineRedirector) plan(ctx context.Context, e *redirect.Engine, cfg redirect.Config) (redirect.Plan, error) {
	facts, err := e.Facts(ctx, cfg)
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
	if cfg.Backend == redirect.BackendEBPF {
		if err := ebpfPaths(r.o.EBPFPinDir, r.o.EBPFCgroupRoot); err != nil {
			return err
		}
	}
	e := r.engine(cfg.Backend)
	p, err := r.plan(ctx, e, cfg)
	if err != nil {
		return err
	}
	if _, err := e.Install(ctx, p); err != nil {
		return fmt.Errorf("install redirection: %w", err)
	}
	return nil
}

func (r engineRedirector) Check(ctx context.Context, cfg redirect.Config) error {
	e := r.engine(cfg.Backend)
	p, err := r.plan(ctx, e, cfg)
	if err != nil {
		return err
	}
	d, err := e.Check(ctx, p)
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
	if _, err := r.engine(backends.AnyBackend).Uninstall(ctx); err != nil {
		return fmt.Errorf("uninstall redirection: %w", err)
	}
	return nil
}
