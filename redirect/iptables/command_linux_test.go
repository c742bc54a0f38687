package iptables

import (
	"context"
	"errors"
	"os/exec"
	"testing"
	"time"
)

// TestCommandCancelled: a tool killed because the caller's context ended
// (Ctrl-C, SIGTERM) fails with the context's error, so the engine says the
// run was interrupted, not that the backend is not usable ("signal: killed").
func TestCommandCancelled(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("sleep"); err != nil {
		t.Skip("no sleep on PATH")
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := command(ctx, "", "sleep", "10")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("command killed by a cancelled context = %v; want it to wrap context.Canceled", err)
	}
	if _, err := command(context.Background(), "", "false"); err == nil || errors.Is(err, context.Canceled) {
		t.Errorf("command that fails on its own = %v; want an error that is not context.Canceled", err)
	}
}
