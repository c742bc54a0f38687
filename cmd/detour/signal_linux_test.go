package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSecondSignalEnds: a command blocked where it does not watch its
// context — `detour plan --config FIFO` waiting for a writer — ignored every
// SIGTERM and Ctrl-C: the first cancels the context, and the handler kept
// swallowing the rest. The second now ends the process.
func TestSecondSignalEnds(t *testing.T) {
	if fifo := os.Getenv("DETOUR_TEST_SIGNAL_FIFO"); fifo != "" {
		// The child: block reading the FIFO, which no one writes.
		os.Exit(run(context.Background(), []string{"plan", "--config", fifo}, strings.NewReader(""), os.Stdout, os.Stderr))
	}
	t.Parallel()
	fifo := filepath.Join(t.TempDir(), "config.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSecondSignalEnds$")
	cmd.Env = append(os.Environ(), "DETOUR_TEST_SIGNAL_FIFO="+fifo)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	ended := false
	defer func() {
		if !ended {
			cmd.Process.Kill()
			<-done
		}
	}()
	// Let the child reach its signal handler and the FIFO.
	time.Sleep(500 * time.Millisecond)
	for i := range 2 {
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("signal %d: %v", i+1, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	select {
	case err := <-done:
		ended = true
		if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Errorf("after two SIGTERMs: %v, want ended by SIGTERM", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("two SIGTERMs did not end detour blocked on its --config FIFO")
	}
}
