//go:build !linux

package nftables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/detour-mesh/detour/redirect"
)

// Options configure a Driver.
type Options struct {
	NetNSFd   int
	TableName string
	Logger    *slog.Logger
}

// Driver is the nftables backend; github.com/google/nftables builds on Linux
// only, so elsewhere it only says so.
type Driver struct{ opts Options }

// New returns a Driver.
func New(o Options) *Driver { return &Driver{opts: o} }

var errLinux = fmt.Errorf("%w: nftables needs Linux: %w", redirect.ErrNotSupported, errors.ErrUnsupported)

// Name is redirect.BackendNFTables.
func (d *Driver) Name() redirect.Backend { return redirect.BackendNFTables }

// Ready reports that nftables exists on Linux only.
func (d *Driver) Ready(ctx context.Context) error { return errLinux }

// Observe is not supported off Linux.
func (d *Driver) Observe(ctx context.Context) (redirect.Installed, error) { return nil, errLinux }

// Apply is not supported off Linux.
func (d *Driver) Apply(ctx context.Context, p redirect.Plan, have redirect.Installed) (bool, error) {
	return false, errLinux
}

// Remove is not supported off Linux.
func (d *Driver) Remove(ctx context.Context, have redirect.Installed) error { return errLinux }

// Render is not supported off Linux.
func (d *Driver) Render(p redirect.Plan) (redirect.Rendering, error) {
	return redirect.Rendering{}, errLinux
}

// InetTables needs Linux.
func InetTables(int) ([]string, error) { return nil, errLinux }
