//go:build !linux

package nftables

import (
	"context"
	"errors"
	"fmt"

	"github.com/detour-mesh/detour/redirect"
)

// Options configure a Driver.
type Options struct {
	NetNSFd int
}

// Driver is the nftables backend; github.com/google/nftables builds on Linux
// only, so elsewhere it only says so.
type Driver struct{ opts Options }

// New returns a Driver.
func New(o Options) *Driver { return &Driver{opts: o} }

// Ready reports that nftables exists on Linux only.
func (d *Driver) Ready(ctx context.Context) error {
	return fmt.Errorf("%w: nftables needs Linux: %w", redirect.ErrNotSupported, errors.ErrUnsupported)
}
