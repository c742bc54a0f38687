//go:build !linux

package main

import (
	"context"
	"errors"
	"time"
)

func runProbe(ctx context.Context, nsPath string, port uint16, p probe, timeout time.Duration) (probeResult, error) {
	return probeResult{}, errors.ErrUnsupported
}

func canSwitchCredentials() bool { return false }

func loopbackDown(string) bool { return false }

func joinCgroup(string) error { return errors.ErrUnsupported }

func getsockoptCgroups(string) map[uint64]bool { return nil }
