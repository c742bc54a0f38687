package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/detour-mesh/detour/controlplane"
	"github.com/detour-mesh/detour/controlplane/kube"
	"github.com/detour-mesh/detour/redirect"
)

// newKubernetesSource builds the Kubernetes source of `detour-cp control-plane`.
func newKubernetesSource(o *controlPlaneOptions, log *slog.Logger) (controlplane.Source, error) {
	base := redirect.Default()
	if o.preset != "" {
		p, err := redirect.Preset(o.preset)
		if err != nil {
			return nil, err
		}
		base = p
	}
	if o.baseConfig != "" {
		doc, err := os.ReadFile(o.baseConfig)
		if err != nil {
			return nil, withCode(exitUsage, fmt.Errorf("read --base-config: %w", err))
		}
		if err := base.Decode(doc); err != nil {
			return nil, fmt.Errorf("--base-config %s: %w", o.baseConfig, err)
		}
	}
	dns := controlplane.DNS{Suffix: o.dnsSuffix}
	for _, u := range o.dnsUpstreams {
		ap, err := controlplane.ParseDNSUpstream(u)
		if err != nil {
			return nil, usageError("--dns-upstream %q %s", u, err)
		}
		dns.Upstreams = append(dns.Upstreams, ap)
	}
	client, err := kube.NewClient(o.kubeconfig)
	if errors.Is(err, kube.ErrKubeconfig) {
		return nil, withCode(exitUsage, err)
	}
	if err != nil {
		return nil, err
	}
	return kube.New(kube.Options{
		Client:         client,
		Namespace:      o.namespace,
		Base:           &base,
		OutboundPolicy: controlplane.OutboundPolicy(o.outboundPolicy),
		DNS:            dns,
		Logger:         log,
	})
}
