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
