package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/detour-mesh/detour/controlplane"
	"github.com/detour-mesh/detour/controlplane/kube"
	"github.com/detour-mesh/detour/internal/meshconfig"
	"github.com/detour-mesh/detour/redirect"
)

// newKubernetesSource builds the Kubernetes source of `detour-cp control-plane`,
// and returns the mesh config it was built with (the injection webhook's).
func newKubernetesSource(o *controlPlaneOptions, log *slog.Logger) (controlplane.Source, meshconfig.Config, error) {
	mesh := meshconfig.Default()
	base := redirect.Default()
	if o.meshConfig != "" {
		if o.preset != "" || o.baseConfig != "" {
			return nil, mesh, usageError("--mesh-config holds the preset and base config; do not combine it with --preset or --base-config")
		}
		var err error
		if mesh, err = meshconfig.Load(o.meshConfig); err != nil {
			return nil, mesh, withCode(exitUsage, err)
		}
		base = mesh.Base()
	}
	if o.preset != "" {
		p, err := redirect.Preset(o.preset)
		if err != nil {
			return nil, mesh, err
		}
		base = p
	}
	if o.baseConfig != "" {
		doc, err := os.ReadFile(o.baseConfig)
		if err != nil {
			return nil, mesh, withCode(exitUsage, fmt.Errorf("read --base-config: %w", err))
		}
		if redirect.EmptyDocument(doc) {
			return nil, mesh, usageError("--base-config %q is empty (no setting in it); leave it out for the defaults, or write {}", o.baseConfig)
		}
		if err := base.Decode(doc); err != nil {
			return nil, mesh, fmt.Errorf("--base-config %s: %w", o.baseConfig, err)
		}
	}
	dns := controlplane.DNS{Suffix: o.dnsSuffix}
	for _, u := range o.dnsUpstreams {
		ap, err := controlplane.ParseDNSUpstream(u)
		if err != nil {
			return nil, mesh, usageError("--dns-upstream %q %s", u, err)
		}
		dns.Upstreams = append(dns.Upstreams, ap)
	}
	client, err := kube.NewClient(o.kubeconfig)
	if errors.Is(err, kube.ErrKubeconfig) {
		return nil, mesh, withCode(exitUsage, err)
	}
	if err != nil {
		return nil, mesh, err
	}
	src, err := kube.New(kube.Options{
		Client:         client,
		Namespace:      o.namespace,
		Base:           &base,
		OutboundPolicy: controlplane.OutboundPolicy(o.outboundPolicy),
		DNS:            dns,
		Logger:         log,
	})
	return src, mesh, err
}
