package main

import (
	"log/slog"

	"github.com/detour-mesh/detour/controlplane"
)

// newKubernetesSource builds the Kubernetes source of `detour control-plane`.
func newKubernetesSource(o *controlPlaneOptions, log *slog.Logger) (controlplane.Source, error) {
	return nil, usageError("--source kubernetes: not built yet (issue #3)")
}
