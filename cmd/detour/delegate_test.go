package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// execCall is what a fake exec was asked to run.
type execCall struct {
	path string
	argv []string
}

// fakeDelegator is a delegator whose detour lives in dir and whose PATH holds
// onPath (empty: nothing); exec records the call instead of replacing the test.
func fakeDelegator(args []string, dir, onPath string, calls *[]execCall) *delegator {
	return &delegator{
		args:       args,
		executable: func() (string, error) { return filepath.Join(dir, "detour"), nil },
		lookPath: func(name string) (string, error) {
			if onPath == "" {
				return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
			}
			return onPath, nil
		},
		exec: func(path string, argv, _ []string) error {
			*calls = append(*calls, execCall{path, argv})
			return nil
		},
	}
}

func runDelegated(t *testing.T, d *delegator) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRootCmd(streams{in: strings.NewReader(""), out: &out, err: &errb}, d)
	root.SetArgs(d.args)
	root.SetOut(&out)
	root.SetErr(&errb)
	return exitCode(root.ExecuteContext(context.Background()), &errb), out.String(), errb.String()
}

func writeExecutable(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestDelegatedCommandsExecDetourCP: `detour control-plane …`, `detour
// bootstrap …` and `detour cni …` run detour-cp (never the plugin beside it), with detour's
// arguments unchanged (flags, --help and root flags included), preferring the
// binary next to detour over PATH.
func TestDelegatedCommandsExecDetourCP(t *testing.T) {
	t.Parallel()
	beside := t.TempDir()
	writeExecutable(t, filepath.Join(beside, "detour-cp"))
	writeExecutable(t, filepath.Join(beside, "detour-cni"))
	empty := t.TempDir()
	tests := []struct {
		name     string
		dir      string
		onPath   string
		args     []string
		wantPath string
	}{
		{"control-plane next to detour", beside, "/usr/bin/detour-cp",
			[]string{"control-plane", "--config", "mesh.yaml", "--xds-address", "127.0.0.1:0"}, filepath.Join(beside, "detour-cp")},
		{"bootstrap from PATH", empty, "/opt/bin/detour-cp",
			[]string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:18000"}, "/opt/bin/detour-cp"},
		{"root flag before the subcommand", beside, "",
			[]string{"-v", "control-plane", "--source", "kubernetes"}, filepath.Join(beside, "detour-cp")},
		{"help is detour-cp's", beside, "",
			[]string{"control-plane", "resources", "--help"}, filepath.Join(beside, "detour-cp")},
		{"cni install is detour-cp's", beside, "/usr/bin/detour-cp",
			[]string{"-v", "cni", "install", "--bin-dir=/opt/cni/bin", "--once"}, filepath.Join(beside, "detour-cp")},
		{"cni ready from PATH", empty, "/opt/bin/detour-cp",
			[]string{"cni", "ready", "--conf-dir", "/etc/cni/net.d"}, "/opt/bin/detour-cp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var calls []execCall
			code, _, stderr := runDelegated(t, fakeDelegator(tt.args, tt.dir, tt.onPath, &calls))
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			want := []execCall{{tt.wantPath, append([]string{tt.wantPath}, tt.args...)}}
			if diff := cmp.Diff(want, calls, cmp.AllowUnexported(execCall{})); diff != "" {
				t.Errorf("exec calls (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDelegatedCommandWithoutDetourCP: with no detour-cp anywhere, the command
// exits 1 naming what it looked for, and nothing is run.
func TestDelegatedCommandWithoutDetourCP(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var calls []execCall
	code, _, stderr := runDelegated(t, fakeDelegator([]string{"control-plane", "--config", "m.yaml"}, dir, "", &calls))
	if code != exitFailure {
		t.Errorf("exit code %d, want %d", code, exitFailure)
	}
	for _, want := range []string{"detour control-plane is served by detour-cp", filepath.Join(dir, "detour-cp"), "nor on PATH"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q does not name %q", stderr, want)
		}
	}
	if len(calls) != 0 {
		t.Errorf("exec was called: %v", calls)
	}
}

// TestDelegatedExecFailureIsReported: a detour-cp that cannot be started is an
// error naming it (exit 1), not a silent success.
func TestDelegatedExecFailureIsReported(t *testing.T) {
	t.Parallel()
	var calls []execCall
	d := fakeDelegator([]string{"bootstrap"}, t.TempDir(), "/opt/bin/detour-cp", &calls)
	d.exec = func(string, []string, []string) error { return errors.New("exec format error") }
	code, _, stderr := runDelegated(t, d)
	if code != exitFailure || !strings.Contains(stderr, "run /opt/bin/detour-cp: exec format error") {
		t.Errorf("exit %d, stderr %q; want exit 1 naming /opt/bin/detour-cp", code, stderr)
	}
}

// TestHelpListsDelegatedCommands: `detour --help` still lists the commands
// that detour-cp serves.
func TestHelpListsDelegatedCommands(t *testing.T) {
	t.Parallel()
	var calls []execCall
	code, out, stderr := runDelegated(t, fakeDelegator([]string{"--help"}, t.TempDir(), "", &calls))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, c := range delegatedCommands() {
		if !strings.Contains(out, "\n  "+c.name+" ") {
			t.Errorf("detour --help does not list %s:\n%s", c.name, out)
		}
	}
	if len(calls) != 0 {
		t.Errorf("--help ran detour-cp: %v", calls)
	}
}
