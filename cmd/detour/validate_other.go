//go:build !linux

package main

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

func runProbe(ctx context.Context, nsPath string, port uint16, p probe, timeout time.Duration) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.ErrUnsupported
}
