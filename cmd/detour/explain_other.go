//go:build !linux

package main

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/detour-mesh/detour/redirect"
)

func localAddrs(nsPath string) (map[netip.Addr]bool, error) { return nil, errors.ErrUnsupported }

func liveProbe(ctx context.Context, p planned, conn redirect.Conn, e explanation, timeout time.Duration) *liveOutcome {
	return &liveOutcome{Error: errors.ErrUnsupported.Error()}
}
