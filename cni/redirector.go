package cni

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/backends/netfilter"
)

// ErrDrift means the rules installed in a pod's namespace differ from what ADD
// installed (CHECK fails with it).
var ErrDrift = errors.New("installed redirection differs from the plan")

// ErrNoEBPF is what a plugin built without the eBPF backend (and without a
// HandOver to the plugin that has it) answers a call that needs that backend.
var ErrNoEBPF = errors.New("this detour-cni is built without the eBPF backend")

// AnyBackend is the Backend of the calls that read or remove detour's state
// in every backend (DEL): the order of the Drivers decides nothing for them.
const AnyBackend = netfilter.AnyBackend

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

// DriversFunc returns the redirect Drivers of a call in a pod's network
// namespace that asks for backend (AnyBackend: one that reads or removes
// every backend's state), in `backend auto`'s order of preference.
type DriversFunc func(o RedirectorOptions, backend redirect.Backend) []redirect.Driver

// NetfilterDrivers is the DriversFunc of a plugin without the eBPF backend:
// both iptables backends and nftables (redirect/backends/netfilter).
func NetfilterDrivers(o RedirectorOptions, backend redirect.Backend) []redirect.Driver {
	return netfilter.Drivers(netfilter.Options{Logger: o.Logger, Backend: backend})
}

// RedirectorOptions say where a Redirector works: the pod's network
// namespace, and where the eBPF backend keeps its node-wide state.
type RedirectorOptions struct {
	// Netns is the path of the pod's network namespace (CNI_NETNS).
	Netns string
	// EBPFPinDir and EBPFCgroupRoot are the plugin config's keys of the same
	// names ("" = the eBPF backend's defaults).
	EBPFPinDir, EBPFCgroupRoot string
	Logger                     *slog.Logger
	// PassthroughRoute makes the plans' passthrough source local with a
	// route on lo instead of an address (redirect.Facts.LoByRuntime).
	PassthroughRoute bool
	// Drivers are the backends the engine uses; nil = NetfilterDrivers.
	Drivers DriversFunc
}

// EngineRedirector returns the Redirector that applies plans with the redirect
// engine inside the network namespace at o.Netns, with o.Drivers. With backend
// ebpf (a build whose Drivers have it) the pod's namespace is enrolled by its
// cookie in the maps pinned under EBPFPinDir (the programs are loaded and
// attached to EBPFCgroupRoot by the first pod).
func EngineRedirector(o RedirectorOptions) Redirector {
	if o.Drivers == nil {
		o.Drivers = NetfilterDrivers
	}
	return engineRedirector{o: o}
}

// engineRedirector makes the Engine of each call for the backend the call
// asks for, so that an install with a named backend does not look up which
// iptables the host uses (netfilter.Options.Backend).
type engineRedirector struct{ o RedirectorOptions }

func (r engineRedirector) engine(backend redirect.Backend) *redirect.Engine {
	return &redirect.Engine{Logger: r.o.Logger, NetNS: r.o.Netns, Drivers: r.o.Drivers(r.o, backend)}
}

func (r engineRedirector) plan(ctx context.Context, e *redirect.Engine, cfg redirect.Config) (redirect.Plan, error) {
	facts, err := e.Facts(ctx, cfg)
	if err != nil {
		return redirect.Plan{}, fmt.Errorf("observe pod namespace: %w", err)
	}
	facts.LoByRuntime = r.o.PassthroughRoute
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
	if _, err := r.engine(AnyBackend).Uninstall(ctx); err != nil {
		return fmt.Errorf("uninstall redirection: %w", err)
	}
	return nil
}
