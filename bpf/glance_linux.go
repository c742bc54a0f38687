package bpf

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/detour-mesh/detour/redirect"
)

var _ redirect.Glancer = (*Driver)(nil)

// Glance tells, without probing the kernel or opening a pin, whether the
// backend may hold anything of detour's (redirect.Glancer): the pinned maps
// every enrolled scope is recorded in exist under the pin directory, or the
// inbound Driver may hold its table. A host where no namespace or cgroup
// was ever enrolled has no such maps.
func (d *Driver) Glance(ctx context.Context) (bool, error) {
	if _, err := os.Stat(d.loader.mapDir()); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return true, fmt.Errorf("look for pinned maps: %w", err)
	}
	if d.opts.Inbound == nil {
		return false, nil
	}
	g, ok := d.opts.Inbound.(redirect.Glancer)
	if !ok {
		return true, nil
	}
	return g.Glance(ctx)
}

var _ redirect.NetSharer = (*Driver)(nil)

// OtherScopes implements redirect.NetSharer: the other eBPF scopes whose
// inbound capture is in the namespace (the inbound Driver's InboundRivals),
// whose passthrough addresses on lo must stay while they are there.
func (d *Driver) OtherScopes(ctx context.Context) ([]string, error) {
	r, ok := d.opts.Inbound.(InboundRivals)
	if !ok {
		return nil, nil
	}
	// Asked even without pins: a table whose scope is gone (its cgroup
	// removed, then the pins swept) still redirects inbound connections.
	have, err := d.opts.Inbound.Observe(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the inbound tables: %w", err)
	}
	return r.InboundRivals(have), nil
}
