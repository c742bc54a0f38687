//go:build !linux

package iptables

import (
	"context"
	"fmt"

	"github.com/detour-mesh/detour/redirect"
)

// The iptables backends are Linux-only; rendering works everywhere.

func hostDefault() (redirect.Backend, bool) { return redirect.BackendIPTablesLegacy, false }

func (d *Driver) Ready(context.Context) error {
	return fmt.Errorf("%s: not on Linux: %w", d.Backend, redirect.ErrNotSupported)
}

func (d *Driver) Observe(ctx context.Context) (redirect.Installed, error) {
	return &installed{backend: d.Backend}, d.Ready(ctx)
}

func (d *Driver) Apply(ctx context.Context, _ redirect.Plan, _ redirect.Installed) (bool, error) {
	return false, d.Ready(ctx)
}

func (d *Driver) Remove(ctx context.Context, _ redirect.Installed) error { return d.Ready(ctx) }
