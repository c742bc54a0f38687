package controlplane

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/detour-mesh/detour/redirect"
)

// recordingSink records what a source delivers.
type recordingSink struct {
	updates  chan *Mesh
	invalids chan error
}

func newRecordingSink() *recordingSink {
	return &recordingSink{updates: make(chan *Mesh, 10), invalids: make(chan error, 10)}
}

func (r *recordingSink) Update(_ context.Context, m *Mesh) (UpdateResult, error) {
	r.updates <- m
	return UpdateResult{}, nil
}

func (r *recordingSink) Invalid(err error) { r.invalids <- err }

func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

const oneWorkload = `
services: [{name: a, virtualIPs: [198.51.100.1], ports: [80]}]
workloads: [{nodeId: w, addresses: [192.0.2.1], reach: [a]}]
`

func TestFileSourceWatches(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeAtomic(t, path, oneWorkload)
	sink := newRecordingSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&FileSource{Path: path, Interval: 5 * time.Millisecond}).Run(ctx, sink) }()

	recv := func() *Mesh {
		t.Helper()
		select {
		case m := <-sink.updates:
			return m
		case err := <-sink.invalids:
			t.Fatalf("unexpected invalid: %v", err)
		case <-time.After(testTimeout):
			t.Fatal("no update")
		}
		return nil
	}
	if m := recv(); len(m.Workloads) != 1 || m.Workloads[0].NodeID != "w" {
		t.Fatalf("first mesh = %+v", m)
	}
	writeAtomic(t, path, strings.Replace(oneWorkload, "nodeId: w", "nodeId: w2", 1))
	if m := recv(); m.Workloads[0].NodeID != "w2" {
		t.Fatalf("changed mesh has node %q, want w2", m.Workloads[0].NodeID)
	}
	writeAtomic(t, path, strings.Replace(oneWorkload, "ports: [80]", "ports: [80000]", 1))
	select {
	case err := <-sink.invalids:
		if !strings.Contains(err.Error(), `services[0].ports[0]: "80000" is not a port`) || !errors.Is(err, redirect.ErrInvalid) {
			t.Errorf("invalid change reported as %v", err)
		}
	case m := <-sink.updates:
		t.Fatalf("an invalid file was delivered as %+v", m)
	case <-time.After(testTimeout):
		t.Fatal("invalid change not reported")
	}
	// Fixing the file delivers again.
	writeAtomic(t, path, oneWorkload)
	if m := recv(); m.Workloads[0].NodeID != "w" {
		t.Fatalf("fixed mesh has node %q", m.Workloads[0].NodeID)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v", err)
	}
}

func TestFileSourceInvalidAtStart(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeAtomic(t, path, "outboundPolicy: deny")
	err := (&FileSource{Path: path}).Run(context.Background(), newRecordingSink())
	if !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), `outboundPolicy: "deny"`) {
		t.Errorf("Run = %v, want an invalid-config error naming outboundPolicy", err)
	}
	err = (&FileSource{Path: filepath.Join(t.TempDir(), "missing.yaml")}).Run(context.Background(), newRecordingSink())
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Run(missing file) = %v", err)
	}
}
